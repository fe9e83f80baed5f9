//! Question templates over a scene graph, each with its answer, multiple-choice options and a
//! reference chain in the paper's two levels written from the graph (perception: what is seen;
//! reasoning: the steps; the last sentence "So, the answer is X.").

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::scene::{unique_description, Attribute, Color, Desc, Object, Relation, Scene, Shape};

/// The question families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionKind {
    /// "What color is the small circle?" (perception of one attribute of a referred object).
    Attribute,
    /// "How many red objects are there?"
    Count,
    /// "Is the square to the left of the red circle?"
    Relation,
    /// "What shape is the nearest object to the left of the teal diamond?" (find set, pick nearest, read attribute).
    NearestInDirection,
    /// "Are there more circles than squares?" (two counts, then a comparison).
    CompareCount,
    /// "Do the hexagon and the large square have the same color?"
    SameAttribute,
    /// "How many objects are above the striped triangle?"
    CountInDirection,
}

impl QuestionKind {
    pub const ALL: &'static [QuestionKind] = &[
        QuestionKind::Attribute,
        QuestionKind::Count,
        QuestionKind::Relation,
        QuestionKind::NearestInDirection,
        QuestionKind::CompareCount,
        QuestionKind::SameAttribute,
        QuestionKind::CountInDirection,
    ];
}

/// A question with everything the scene graph knows about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub kind: QuestionKind,
    pub text: String,
    pub answer: String,
    /// Accepted free-form answers (the answer, and for numbers also the word).
    pub direct_answers: Vec<String>,
    pub choices: Vec<String>,
    pub correct_choice: usize,
    /// Image_level sentences.
    pub perception: Vec<String>,
    /// For each perception sentence, the object it describes (None for "there is no …").
    pub perception_objects: Vec<Option<usize>>,
    /// Reasoning_level sentences; the last is "So, the answer is X."
    pub reasoning: Vec<String>,
}

const NUMBER_WORDS: [&str; 21] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];

/// The perception sentence for one object: full description and coarse position.
pub fn see(scene: &Scene, o: &Object) -> String {
    format!("There is a {} {}.", o.full_description(), o.region(scene.width, scene.height))
}

/// A perception sentence for every object of the scene, in reading order (top to bottom, then left to
/// right, by centre): the scene's full description, as LLaVA's caption-alignment data describes an image.
pub fn describe(scene: &Scene) -> Vec<String> {
    let mut objs: Vec<&Object> = scene.objects.iter().collect();
    objs.sort_by(|a, b| a.y.total_cmp(&b.y).then(a.x.total_cmp(&b.x)));
    objs.into_iter().map(|o| see(scene, o)).collect()
}

/// The extra (prompt, target) examples the demo MLLM trains on for one training scene: its description
/// under `describe_prompt` (when set), with `drills` the [`perception_drills`], and with `objects` the
/// [`object_drills`].
pub fn scene_examples(scene: &Scene, describe_prompt: Option<&str>, drills: bool, objects: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(prompt) = describe_prompt {
        out.push((prompt.to_string(), describe(scene).join(" ")));
    }
    if drills {
        out.extend(perception_drills(scene));
    }
    if objects {
        out.extend(object_drills(scene));
    }
    out
}

/// Object drills: for every object the scene can name by a short unique description ("the circle", "the
/// small square"), ("Describe the circle.", its perception sentence: full description and region). The
/// chains' perception sentences are exactly this step, find the object a question names and read the rest
/// of it off the image, but buried in long targets whose other tokens the question or priors predict;
/// a short target that only the image can give makes the decoder learn to look.
pub fn object_drills(scene: &Scene) -> Vec<(String, String)> {
    (0..scene.objects.len())
        .filter_map(|t| {
            let d = unique_description(&scene.objects, t, None)?;
            Some((format!("Describe the {}.", d.phrase()), see(scene, &scene.objects[t])))
        })
        .collect()
}

/// Short perception drills on the whole scene, (question, answer): how many objects, which colors, which
/// shapes, which patterns. Global questions with one-sentence answers are what a small model learns to
/// read off image features first (a targeted answer makes the image the only useful input), the way
/// LLaVA's alignment stage precedes instruction tuning.
pub fn perception_drills(scene: &Scene) -> Vec<(String, String)> {
    fn listed<T: Ord + Copy>(scene: &Scene, f: impl Fn(&Object) -> T, word: impl Fn(T) -> &'static str) -> String {
        let set: std::collections::BTreeSet<T> = scene.objects.iter().map(f).collect();
        set.into_iter().map(word).collect::<Vec<_>>().join(", ")
    }
    let n = scene.objects.len();
    vec![
        (
            "How many objects are there?".into(),
            format!("There {} {n} object{}.", if n == 1 { "is" } else { "are" }, if n == 1 { "" } else { "s" }),
        ),
        ("Which colors do the objects have?".into(), format!("The colors are {}.", listed(scene, |o| o.color, |c| c.word()))),
        ("Which shapes are there?".into(), format!("The shapes are {}.", listed(scene, |o| o.shape, |c| c.word()))),
        ("Which patterns do the objects have?".into(), format!("The patterns are {}.", listed(scene, |o| o.texture, |c| c.adjective()))),
    ]
}

fn final_sentence(answer: &str) -> String {
    format!("So, the answer is {answer}.")
}

/// "the A", "the A and the B", "the A, the B and the C".
fn list_objects(objs: &[&Object]) -> String {
    let names: Vec<String> = objs.iter().map(|o| format!("the {}", o.full_description())).collect();
    match names.len() {
        0 => String::new(),
        1 => names[0].clone(),
        n => format!("{} and {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

fn count_sentence(n: usize, d: &Desc) -> String {
    if n == 1 {
        format!("There is 1 {}.", d.phrase())
    } else {
        format!("There are {n} {}.", d.plural())
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Options: the answer, then `prefer` (hard distractors), then others from `pool`, `n` in all, shuffled.
fn make_choices<R: Rng>(rng: &mut R, answer: &str, prefer: &[String], pool: &[String], n: usize) -> (Vec<String>, usize) {
    let mut out = vec![answer.to_string()];
    for p in prefer {
        if out.len() < n && !out.contains(p) {
            out.push(p.clone());
        }
    }
    let mut rest: Vec<&String> = pool.iter().filter(|p| !out.contains(p)).collect();
    rest.shuffle(rng);
    for p in rest {
        if out.len() >= n {
            break;
        }
        out.push(p.clone());
    }
    out.shuffle(rng);
    let idx = out.iter().position(|c| c == answer).expect("answer is among the choices");
    (out, idx)
}

/// What a chain rests on: perception sentences, the object behind each, and reasoning steps
/// (the closing "So, the answer is X." is added by the question builders).
struct Evidence {
    perception: Vec<String>,
    objects: Vec<Option<usize>>,
    reasoning: Vec<String>,
}

fn ev(perception: Vec<String>, objects: Vec<Option<usize>>, reasoning: Vec<String>) -> Evidence {
    Evidence { perception, objects, reasoning }
}

fn yes_no_question(kind: QuestionKind, text: String, truth: bool, ev: Evidence) -> Question {
    let Evidence { perception, objects: objs, mut reasoning } = ev;
    let answer = yes_no(truth).to_string();
    reasoning.push(final_sentence(&answer));
    Question {
        kind,
        text,
        direct_answers: vec![answer.clone()],
        choices: vec!["yes".into(), "no".into()],
        correct_choice: if truth { 0 } else { 1 },
        answer,
        perception,
        perception_objects: objs,
        reasoning,
    }
}

fn count_question<R: Rng>(rng: &mut R, kind: QuestionKind, text: String, n: usize, ev: Evidence) -> Question {
    let Evidence { perception, objects: objs, mut reasoning } = ev;
    let answer = n.to_string();
    reasoning.push(final_sentence(&answer));
    let lo = n.saturating_sub(2);
    let pool: Vec<String> = (lo..=n + 3).filter(|&k| k != n).map(|k| k.to_string()).collect();
    let prefer: Vec<String> = [n.checked_sub(1), Some(n + 1)].into_iter().flatten().map(|k| k.to_string()).collect();
    let (choices, correct_choice) = make_choices(rng, &answer, &prefer, &pool, 4);
    let mut direct_answers = vec![answer.clone()];
    if let Some(w) = NUMBER_WORDS.get(n) {
        direct_answers.push(w.to_string());
    }
    Question { kind, text, answer, direct_answers, choices, correct_choice, perception, perception_objects: objs, reasoning }
}

fn attribute_question<R: Rng>(rng: &mut R, kind: QuestionKind, text: String, attr: Attribute, value: &str, ev: Evidence) -> Question {
    let Evidence { perception, objects: objs, mut reasoning } = ev;
    let answer = value.to_string();
    reasoning.push(final_sentence(&answer));
    let pool: Vec<String> = attr.values().into_iter().map(str::to_string).collect();
    let prefer: Vec<String> = match attr {
        Attribute::Color => Color::from_word(value).map(|c| c.similar().iter().map(|s| s.word().to_string()).collect()).unwrap_or_default(),
        _ => Vec::new(),
    };
    let (choices, correct_choice) = make_choices(rng, &answer, &prefer, &pool, 4);
    Question {
        kind,
        text,
        direct_answers: vec![answer.clone()],
        answer,
        choices,
        correct_choice,
        perception,
        perception_objects: objs,
        reasoning,
    }
}

/// Sample a question of a random kind (by `weights`, aligned with [`QuestionKind::ALL`]) that the
/// scene supports; falls back to counting all objects, which every scene supports.
pub fn sample_question<R: Rng>(rng: &mut R, scene: &Scene, weights: &[f32], margin: f32) -> Question {
    let total: f32 = weights.iter().sum();
    for _ in 0..6 {
        let mut pick = rng.random_range(0.0..total.max(f32::MIN_POSITIVE));
        let mut kind = QuestionKind::ALL[QuestionKind::ALL.len() - 1];
        for (k, w) in QuestionKind::ALL.iter().zip(weights) {
            if pick < *w {
                kind = *k;
                break;
            }
            pick -= w;
        }
        // Retry the drawn kind with other objects first, so that kinds that are often
        // ambiguous (nearest in a direction) keep their share instead of falling to counting.
        for _ in 0..8 {
            if let Some(q) = try_kind(rng, scene, kind, margin) {
                return q;
            }
        }
    }
    count_all(rng, scene)
}

/// Try to instantiate one question of `kind`; None when this scene cannot support it unambiguously.
pub fn try_kind<R: Rng>(rng: &mut R, scene: &Scene, kind: QuestionKind, margin: f32) -> Option<Question> {
    let objs = &scene.objects;
    if objs.is_empty() {
        return None;
    }
    match kind {
        QuestionKind::Attribute => {
            let t = rng.random_range(0..objs.len());
            let attr = *Attribute::ALL.choose(rng)?;
            let d = unique_description(objs, t, Some(attr))?;
            let o = &objs[t];
            let text = match attr {
                Attribute::Texture => format!("What pattern does the {} have?", d.phrase()),
                _ => format!("What {} is the {}?", attr.word(), d.phrase()),
            };
            let value = attr.value_of(o);
            let reasoning = vec![
                format!("The only {} in the image is the {}.", d.phrase(), o.full_description()),
                format!("Its {} is {}.", attr.word(), value),
            ];
            Some(attribute_question(rng, kind, text, attr, value, ev(vec![see(scene, o)], vec![Some(t)], reasoning)))
        }
        QuestionKind::Count => {
            let d = if rng.random_bool(0.7) {
                let o = objs.choose(rng)?;
                let attrs: &[&[Attribute]] = &[
                    &[Attribute::Color],
                    &[Attribute::Shape],
                    &[Attribute::Color, Attribute::Shape],
                    &[Attribute::Size, Attribute::Shape],
                    &[Attribute::Texture],
                    &[Attribute::Size],
                ];
                Desc::of(o, attrs.choose(rng)?)
            } else {
                // A description drawn from the vocabulary: the count may well be zero.
                Desc {
                    color: Some(*Color::ALL.choose(rng)?),
                    shape: rng.random_bool(0.5).then(|| *Shape::ALL.choose(rng).expect("non-empty")),
                    ..Desc::default()
                }
            };
            let matching: Vec<&Object> = objs.iter().filter(|o| d.matches(o)).collect();
            let n = matching.len();
            let text = format!("How many {} are there?", d.plural());
            let (perception, ids) = if n == 0 {
                (vec![format!("There is no {} in the image.", d.phrase())], vec![None])
            } else {
                (matching.iter().map(|o| see(scene, o)).collect(), matching.iter().map(|o| Some(o.id)).collect())
            };
            let reasoning = if n == 0 {
                vec![format!("No object in the image is a {}, so the count is 0.", d.phrase())]
            } else {
                vec![format!("Counting the {} gives {n}.", d.plural())]
            };
            Some(count_question(rng, kind, text, n, ev(perception, ids, reasoning)))
        }
        QuestionKind::Relation => {
            if objs.len() < 2 {
                return None;
            }
            let a = rng.random_range(0..objs.len());
            let b = (a + rng.random_range(1..objs.len())) % objs.len();
            let r = *Relation::ALL.choose(rng)?;
            let truth = r.holds(&objs[a], &objs[b], margin)?;
            let (da, db) = (unique_description(objs, a, None)?, unique_description(objs, b, None)?);
            let text = format!("Is the {} {} the {}?", da.phrase(), r.phrase(), db.phrase());
            let step = if truth {
                format!("The {} is {} the {}.", objs[a].full_description(), r.phrase(), objs[b].full_description())
            } else {
                format!(
                    "The {} is {} the {}, not {} it.",
                    objs[a].full_description(),
                    r.opposite().phrase(),
                    objs[b].full_description(),
                    r.phrase()
                )
            };
            Some(yes_no_question(
                kind,
                text,
                truth,
                ev(vec![see(scene, &objs[a]), see(scene, &objs[b])], vec![Some(a), Some(b)], vec![step]),
            ))
        }
        QuestionKind::NearestInDirection => {
            if objs.len() < 2 {
                return None;
            }
            let a = rng.random_range(0..objs.len());
            let r = *Relation::ALL.choose(rng)?;
            let anchor = &objs[a];
            // Every other object must be clearly on one side or the other of the anchor.
            let mut side: Vec<(&Object, f32)> = Vec::new();
            for o in objs.iter().filter(|o| o.id != a) {
                if r.holds(o, anchor, margin)? {
                    side.push((o, dist(o, anchor)));
                }
            }
            if side.is_empty() {
                return None;
            }
            side.sort_by(|x, y| x.1.total_cmp(&y.1));
            if side.len() > 1 && side[1].1 - side[0].1 < margin {
                return None; // nearest not clearly nearest
            }
            let nearest = side[0].0;
            let attr = *[Attribute::Color, Attribute::Shape].choose(rng)?;
            let da = unique_description(objs, a, None)?;
            let text = format!("What {} is the nearest object {} the {}?", attr.word(), r.phrase(), da.phrase());
            let set: Vec<&Object> = side.iter().map(|(o, _)| *o).collect();
            let mut perception = vec![see(scene, anchor)];
            let mut ids = vec![Some(a)];
            for o in &set {
                perception.push(see(scene, o));
                ids.push(Some(o.id));
            }
            let mut reasoning = Vec::new();
            if set.len() == 1 {
                reasoning.push(format!("The only object {} the {} is {}.", r.phrase(), anchor.full_description(), list_objects(&set)));
            } else {
                reasoning.push(format!("The objects {} the {} are {}.", r.phrase(), anchor.full_description(), list_objects(&set)));
                reasoning.push(format!(
                    "Of these, the {} is the nearest to the {}.",
                    nearest.full_description(),
                    anchor.full_description()
                ));
            }
            let value = attr.value_of(nearest);
            reasoning.push(format!("Its {} is {}.", attr.word(), value));
            Some(attribute_question(rng, kind, text, attr, value, ev(perception, ids, reasoning)))
        }
        QuestionKind::CompareCount => {
            let attr = *[Attribute::Color, Attribute::Shape].choose(rng)?;
            let o = objs.choose(rng)?;
            let d1 = Desc::of(o, &[attr]);
            let others: Vec<&'static str> = attr.values().into_iter().filter(|v| *v != attr.value_of(o)).collect();
            let w2 = *others.choose(rng)?;
            let d2 = match attr {
                Attribute::Color => Desc { color: Color::from_word(w2), ..Desc::default() },
                _ => Desc { shape: Shape::from_word(w2), ..Desc::default() },
            };
            let count = |d: &Desc| objs.iter().filter(|o| d.matches(o)).count();
            // Balance yes and no: when the counts differ, a coin decides which comes first.
            let want_yes = rng.random_bool(0.5);
            let (d1, d2) = if (count(&d1) > count(&d2)) == want_yes { (d1, d2) } else { (d2, d1) };
            let (n1, n2) = (count(&d1), count(&d2));
            let text = format!("Are there more {} than {}?", d1.plural(), d2.plural());
            let involved: Vec<&Object> = objs.iter().filter(|o| d1.matches(o) || d2.matches(o)).collect();
            let truth = n1 > n2;
            let cmp = if truth { format!("{n1} is more than {n2}.") } else { format!("{n1} is not more than {n2}.") };
            Some(yes_no_question(
                kind,
                text,
                truth,
                ev(
                    involved.iter().map(|o| see(scene, o)).collect(),
                    involved.iter().map(|o| Some(o.id)).collect(),
                    vec![count_sentence(n1, &d1), count_sentence(n2, &d2), cmp],
                ),
            ))
        }
        QuestionKind::SameAttribute => {
            if objs.len() < 2 {
                return None;
            }
            let a = rng.random_range(0..objs.len());
            let attr = *Attribute::ALL.choose(rng)?;
            // Half the time pick a partner that shares the value (if any), so "yes" is not rare.
            let same: Vec<usize> = (0..objs.len()).filter(|&b| b != a && attr.value_of(&objs[b]) == attr.value_of(&objs[a])).collect();
            let b = match same.choose(rng) {
                Some(&b) if rng.random_bool(0.5) => b,
                _ => (a + rng.random_range(1..objs.len())) % objs.len(),
            };
            let da = unique_description(objs, a, Some(attr))?;
            let db = unique_description(objs, b, Some(attr))?;
            let (va, vb) = (attr.value_of(&objs[a]), attr.value_of(&objs[b]));
            let text = format!("Do the {} and the {} have the same {}?", da.phrase(), db.phrase(), attr.word());
            let reasoning = vec![
                format!("The {} of the {} is {}.", attr.word(), da.phrase(), va),
                format!("The {} of the {} is {}.", attr.word(), db.phrase(), vb),
            ];
            Some(yes_no_question(
                kind,
                text,
                va == vb,
                ev(vec![see(scene, &objs[a]), see(scene, &objs[b])], vec![Some(a), Some(b)], reasoning),
            ))
        }
        QuestionKind::CountInDirection => {
            if objs.len() < 2 {
                return None;
            }
            let a = rng.random_range(0..objs.len());
            let r = *Relation::ALL.choose(rng)?;
            let anchor = &objs[a];
            let mut set: Vec<&Object> = Vec::new();
            for o in objs.iter().filter(|o| o.id != a) {
                if r.holds(o, anchor, margin)? {
                    set.push(o);
                }
            }
            let da = unique_description(objs, a, None)?;
            let text = format!("How many objects are {} the {}?", r.phrase(), da.phrase());
            let mut perception = vec![see(scene, anchor)];
            let mut ids = vec![Some(a)];
            for o in &set {
                perception.push(see(scene, o));
                ids.push(Some(o.id));
            }
            let n = set.len();
            let mut reasoning = vec![match n {
                0 => format!("No object is {} the {}.", r.phrase(), anchor.full_description()),
                1 => format!("The only object {} the {} is {}.", r.phrase(), anchor.full_description(), list_objects(&set)),
                _ => format!("The objects {} the {} are {}.", r.phrase(), anchor.full_description(), list_objects(&set)),
            }];
            if n > 1 {
                reasoning.push(format!("That makes {n} objects."));
            }
            Some(count_question(rng, kind, text, n, ev(perception, ids, reasoning)))
        }
    }
}

fn dist(a: &Object, b: &Object) -> f32 {
    ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt()
}

/// "How many objects are there?": always answerable, the fallback.
fn count_all<R: Rng>(rng: &mut R, scene: &Scene) -> Question {
    let n = scene.objects.len();
    let perception = scene.objects.iter().map(|o| see(scene, o)).collect();
    let ids = scene.objects.iter().map(|o| Some(o.id)).collect();
    let reasoning = vec![format!("Counting all the objects gives {n}.")];
    count_question(rng, QuestionKind::Count, "How many objects are there?".into(), n, ev(perception, ids, reasoning))
}
