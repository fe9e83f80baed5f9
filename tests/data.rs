//! Tests of the data library: the item schema, the Penumbra benchmark (determinism, chains
//! checked against the scene graph, pixels checked against the graph, rate), the loaders on
//! fixtures in each official format, and the paper's real annotated files.

use std::collections::HashSet;
use std::path::PathBuf;

use mmboundary::data::penumbra::{
    self, render, scene_of, Attribute, Color, Desc, Object, PenumbraParams, QuestionKind, Relation, Scene, Shape, Size, Texture,
};
use mmboundary::data::{items_from_record_batch, items_to_record_batch, Item};

fn params(n: usize, seed: u64) -> PenumbraParams {
    PenumbraParams { n_items: n, seed, ..PenumbraParams::default() }
}

fn generate(p: &PenumbraParams) -> Vec<Item> {
    penumbra::generate(p).expect("generation succeeds")
}

// ---------------------------------------------------------------- schema

#[test]
fn record_batch_round_trip_keeps_every_field() {
    let items = generate(&params(30, 7));
    let batch = items_to_record_batch(&items).unwrap();
    assert_eq!(batch.num_rows(), 30);
    assert_eq!(batch.schema().fields().len(), 15);
    let back = items_from_record_batch(&batch).unwrap();
    assert_eq!(back.len(), items.len());
    for (b, a) in back.iter().zip(&items) {
        // Compare field by field so a failure names the field, not a 100 KB dump.
        assert_eq!(b.id, a.id);
        assert_eq!((&b.source, &b.split, &b.question), (&a.source, &a.split, &a.question));
        assert!(b.image == a.image, "{}: image differs", a.id);
        assert_eq!(
            (&b.choices, b.correct_choice, &b.direct_answers, &b.answer),
            (&a.choices, a.correct_choice, &a.direct_answers, &a.answer)
        );
        assert_eq!(b.chain, a.chain);
        assert_eq!((b.difficulty, &b.captions, &b.hard_negatives), (a.difficulty, &a.captions, &a.hard_negatives));
        assert_eq!(b.meta, a.meta, "{}", a.id);
    }
}

#[test]
fn hf_features_cover_every_column_with_image_as_struct() {
    let f = mmboundary::data::hf_features();
    let schema = mmboundary::data::item_schema();
    let obj = f.as_object().unwrap();
    for field in schema.fields() {
        assert!(obj.contains_key(field.name()), "features lack column {}", field.name());
    }
    assert_eq!(obj.len(), schema.fields().len());
    assert_eq!(f["image"]["_type"], "Image");
    assert_eq!(f["choices"]["_type"], "Sequence");
    assert_eq!(f["correct_choice"]["dtype"], "int32");
    let meta: serde_json::Value = serde_json::from_str(&mmboundary::data::hf_metadata_json()).unwrap();
    assert_eq!(meta["info"]["features"], f);
    // The image column is struct<bytes: binary, path: string>, as `datasets` stores Image.
    let img = schema.field_with_name("image").unwrap();
    use arrow::datatypes::{DataType, Field, Fields};
    let want = DataType::Struct(Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)]));
    assert_eq!(img.data_type(), &want);
}

#[test]
fn out_of_range_correct_choice_is_an_error() {
    let mut items = generate(&params(2, 1));
    items[1].correct_choice = Some(9);
    let err = items_to_record_batch(&items).unwrap_err().to_string();
    assert!(err.contains(&items[1].id) && err.contains("out of range"), "{err}");
}

// ---------------------------------------------------------------- Penumbra: determinism

#[test]
fn penumbra_same_seed_same_batch_and_bytes_regardless_of_threads() {
    let p = params(60, 42);
    let a = generate(&p);
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let b = one_thread.install(|| generate(&p));
    let (ba, bb) = (items_to_record_batch(&a).unwrap(), items_to_record_batch(&b).unwrap());
    assert_eq!(ba, bb);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.image.as_ref().unwrap().bytes, y.image.as_ref().unwrap().bytes);
    }
    // A different seed gives different items; an item does not depend on how many are made.
    let c = generate(&params(60, 43));
    assert_ne!(a[0].image, c[0].image);
    let single = penumbra::generate_one(&p, 17).unwrap().item;
    assert_eq!(single, a[17]);
    let chunk = penumbra::generate_range(&p, 20..30).unwrap();
    assert_eq!(chunk.as_slice(), &a[20..30]);
    assert!(penumbra::generate_range(&p, 50..61).unwrap_err().to_string().contains("not within 0..60"));
}

#[test]
fn penumbra_splits_levels_and_ood_style() {
    let p = params(200, 3);
    let items = generate(&p);
    let count = |s: &str| items.iter().filter(|i| i.split == s).count();
    assert_eq!((count("train"), count("val"), count("test"), count("ood")), (140, 20, 20, 20));
    let levels: HashSet<u32> = items.iter().map(|i| i.difficulty.unwrap()).collect();
    assert_eq!(levels.len(), 5, "all five levels appear in 200 items");
    let held: Vec<(Shape, Color)> = p.held_out.clone();
    let ids: HashSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), items.len(), "ids are unique");
    for it in &items {
        let scene = scene_of(it).unwrap();
        let has_held = scene.objects.iter().any(|o| held.contains(&(o.shape, o.color)));
        if it.split == "ood" {
            assert!(has_held, "{}: an ood scene shows a held-out combination", it.id);
            assert_eq!(scene.style, penumbra::Style::Dark);
        } else {
            assert!(!has_held, "{}: held-out combination leaked into {}", it.id, it.split);
            assert_eq!(scene.style, penumbra::Style::Plain);
        }
    }
}

// ---------------------------------------------------------------- Penumbra: chains vs scene graph
//
// An independent oracle: it parses the question text back into descriptions, re-derives the
// answer from the scene graph, and checks each chain sentence's claims.

fn parse_desc(words: &str) -> Desc {
    let mut d = Desc::default();
    for w in words.split_whitespace() {
        let singular = w.strip_suffix('s').unwrap_or(w);
        if let Some(v) = Size::from_word(w) {
            d.size = Some(v);
        } else if let Some(v) = Color::from_word(w) {
            d.color = Some(v);
        } else if let Some(v) = Texture::from_word(w) {
            d.texture = Some(v);
        } else if let Some(v) = Shape::from_word(w).or_else(|| Shape::from_word(singular)) {
            d.shape = Some(v);
        } else {
            assert!(w == "object" || w == "objects", "unexpected word {w:?} in a description");
        }
    }
    d
}

fn the_one<'a>(scene: &'a Scene, words: &str) -> &'a Object {
    let d = parse_desc(words);
    let m: Vec<&Object> = scene.objects.iter().filter(|o| d.matches(o)).collect();
    assert_eq!(m.len(), 1, "description {words:?} must pick out exactly one object");
    m[0]
}

fn parse_relation(s: &str) -> Option<(Relation, &str, &str)> {
    for r in Relation::ALL {
        let pat = format!(" {} ", r.phrase());
        if let Some((a, b)) = s.split_once(&pat) {
            return Some((*r, a, b));
        }
    }
    None
}

fn attr_of(word: &str) -> Attribute {
    match word {
        "color" => Attribute::Color,
        "shape" => Attribute::Shape,
        "size" => Attribute::Size,
        "pattern" => Attribute::Texture,
        w => panic!("unknown attribute word {w}"),
    }
}

/// Re-derive the answer to `q` from the scene graph alone.
fn oracle_answer(scene: &Scene, q: &str, margin: f32) -> String {
    let yn = |b: bool| {
        if b {
            "yes".to_string()
        } else {
            "no".to_string()
        }
    };
    if q == "How many objects are there?" {
        return scene.objects.len().to_string();
    }
    if let Some(rest) = q.strip_prefix("How many objects are ").and_then(|r| r.strip_suffix('?')) {
        let probe = format!("x {rest}");
        let (r, _, anchor) = parse_relation(&probe).unwrap();
        let a = the_one(scene, anchor.trim_start_matches("the "));
        for o in scene.objects.iter().filter(|o| o.id != a.id) {
            assert!(r.holds(o, a, margin).is_some(), "an object too close to call for {q}");
        }
        return scene.objects.iter().filter(|o| o.id != a.id && r.holds(o, a, margin) == Some(true)).count().to_string();
    }
    if let Some(rest) = q.strip_prefix("How many ").and_then(|r| r.strip_suffix(" are there?")) {
        let d = parse_desc(rest);
        return scene.objects.iter().filter(|o| d.matches(o)).count().to_string();
    }
    if let Some(rest) = q.strip_prefix("Are there more ").and_then(|r| r.strip_suffix('?')) {
        let (p1, p2) = rest.split_once(" than ").unwrap();
        let (d1, d2) = (parse_desc(p1), parse_desc(p2));
        let n = |d: &Desc| scene.objects.iter().filter(|o| d.matches(o)).count();
        return yn(n(&d1) > n(&d2));
    }
    if let Some(rest) = q.strip_prefix("Do the ").and_then(|r| r.strip_suffix('?')) {
        let (pair, attr) = rest.split_once(" have the same ").unwrap();
        let (a, b) = pair.split_once(" and the ").unwrap();
        let attr = attr_of(attr);
        return yn(attr.value_of(the_one(scene, a)) == attr.value_of(the_one(scene, b)));
    }
    if let Some(rest) = q.strip_prefix("Is the ").and_then(|r| r.strip_suffix('?')) {
        let (r, a, b) = parse_relation(rest).unwrap();
        let (a, b) = (the_one(scene, a), the_one(scene, b.trim_start_matches("the ")));
        return yn(r.holds(a, b, margin).expect("asked relations are clear"));
    }
    if let Some(rest) = q.strip_prefix("What pattern does the ").and_then(|r| r.strip_suffix(" have?")) {
        return the_one(scene, rest).texture.word().into();
    }
    if let Some(rest) = q.strip_prefix("What ").and_then(|r| r.strip_suffix('?')) {
        let (attr, rest) = rest.split_once(' ').unwrap();
        let attr = attr_of(attr);
        if let Some(rel) = rest.strip_prefix("is the nearest object ") {
            let probe = format!("x {rel}");
            let (r, _, anchor) = parse_relation(&probe).unwrap();
            let a = the_one(scene, anchor.trim_start_matches("the "));
            let mut side: Vec<(&Object, f32)> = scene
                .objects
                .iter()
                .filter(|o| o.id != a.id && r.holds(o, a, margin) == Some(true))
                .map(|o| (o, ((o.x - a.x).powi(2) + (o.y - a.y).powi(2)).sqrt()))
                .collect();
            side.sort_by(|x, y| x.1.total_cmp(&y.1));
            return attr.value_of(side[0].0).into();
        }
        let words = rest.strip_prefix("is the ").unwrap();
        return attr.value_of(the_one(scene, words)).into();
    }
    panic!("question not understood by the oracle: {q}");
}

fn region(o: &Object, w: u32, h: u32) -> &'static str {
    let col = ((o.x * 3.0 / w as f32) as usize).min(2);
    let row = ((o.y * 3.0 / h as f32) as usize).min(2);
    [
        ["at the top left", "at the top", "at the top right"],
        ["on the left", "in the center", "on the right"],
        ["at the bottom left", "at the bottom", "at the bottom right"],
    ][row][col]
}

#[test]
fn penumbra_answers_and_chains_agree_with_the_scene_graph() {
    let p = params(400, 11);
    let margin = p.relation_margin * p.image_size as f32;
    let mut kinds = HashSet::new();
    for i in 0..p.n_items {
        let g = penumbra::generate_one(&p, i).unwrap();
        let (it, scene) = (&g.item, &g.scene);
        assert_eq!(&scene_of(it).unwrap(), scene, "meta carries the scene graph");
        kinds.insert(g.question.kind);
        let answer = it.answer.clone().unwrap();
        assert_eq!(oracle_answer(scene, &it.question, margin), answer, "{}: {}", it.id, it.question);
        // Options: unique, the marked one is the answer.
        assert_eq!(it.choices[it.correct_choice.unwrap() as usize], answer);
        assert_eq!(it.choices.iter().collect::<HashSet<_>>().len(), it.choices.len());
        assert!(it.direct_answers.contains(&answer));
        // Reasoning ends with the paper's closing sentence.
        assert_eq!(it.chain.reasoning.last().unwrap(), &format!("So, the answer is {answer}."));
        // Every perception sentence is true of the object it names, position included.
        let ids = it.meta["perception_objects"].as_array().unwrap();
        assert_eq!(ids.len(), it.chain.perception.len());
        for (sentence, id) in it.chain.perception.iter().zip(ids) {
            match id.as_u64() {
                Some(id) => {
                    let o = &scene.objects[id as usize];
                    let expect = format!(
                        "There is a {} {} {} {} {}.",
                        o.size.word(),
                        o.color.word(),
                        o.texture.word(),
                        o.shape.word(),
                        region(o, scene.width, scene.height)
                    );
                    assert_eq!(sentence, &expect, "{}", it.id);
                }
                None => {
                    let words = sentence.strip_prefix("There is no ").unwrap().strip_suffix(" in the image.").unwrap();
                    let d = parse_desc(words);
                    assert!(scene.objects.iter().all(|o| !d.matches(o)), "{}: {sentence}", it.id);
                }
            }
        }
        // Counting questions list exactly the counted objects.
        if g.question.kind == QuestionKind::Count && answer != "0" {
            assert_eq!(it.chain.perception.len().to_string(), answer, "{}", it.id);
        }
        // Captions are true of some object; hard negatives of none.
        assert_eq!(it.captions.len(), it.hard_negatives.len());
        for (c, n) in it.captions.iter().zip(&it.hard_negatives) {
            assert_ne!(c, n);
            if let Some((r, a, b)) = parse_relation(c) {
                let (a, b) = (the_one(scene, a.trim_start_matches("a ")), the_one(scene, b.trim_start_matches("a ")));
                assert_eq!(r.holds(a, b, margin), Some(true), "{c}");
                let (rn, _, _) = parse_relation(n).unwrap();
                assert_eq!(rn.holds(a, b, margin), Some(false), "{n}");
            } else {
                let matches = |s: &str| {
                    let d = parse_desc(s.trim_start_matches("a "));
                    scene.objects.iter().filter(|o| d.matches(o)).count()
                };
                assert!(matches(c) >= 1, "{c}");
                assert_eq!(matches(n), 0, "{n} must be false of every object");
            }
        }
    }
    assert_eq!(kinds.len(), QuestionKind::ALL.len(), "every question kind occurs in 400 items");
}

/// The demo MLLM's extra questions: answered right by the scene graph, closed by the paper's sentence, the same on
/// every call, and drawn apart from the item's own question.
#[test]
fn penumbra_extra_questions_agree_with_the_scene_graph_and_are_their_own_draws() {
    let p = params(60, 5);
    let margin = p.relation_margin * p.image_size as f32;
    let (mut same_as_own, mut total) = (0, 0);
    for i in 0..p.n_items {
        let g = penumbra::generate_one(&p, i).unwrap();
        let extra = penumbra::extra_questions(&p, i, &g.scene, 3);
        assert_eq!(extra.len(), 3);
        assert_eq!(extra, penumbra::extra_questions(&p, i, &g.scene, 3), "item {i}: the same draw every time");
        assert_eq!(penumbra::extra_questions(&p, i, &g.scene, 1)[..], extra[..1], "item {i}: k only says how many");
        for q in &extra {
            assert_eq!(oracle_answer(&g.scene, &q.text, margin), q.answer, "item {i}: {}", q.text);
            assert_eq!(q.reasoning.last().unwrap(), &format!("So, the answer is {}.", q.answer));
            assert_eq!(q.choices[q.correct_choice], q.answer);
            same_as_own += usize::from(q.text == g.question.text);
            total += 1;
        }
    }
    // Seven kinds over many objects: a draw of its own repeats the item's question rarely.
    assert!(same_as_own * 5 < total, "{same_as_own} of {total} extra questions repeat the item's own");
}

// ---------------------------------------------------------------- Penumbra: pixels vs scene graph

fn topmost_at(scene: &Scene, px: u32, py: u32) -> Option<&Object> {
    scene.objects.iter().rev().find(|o| o.covers(px, py))
}

#[test]
fn penumbra_objects_are_drawn_where_the_graph_says() {
    let p = params(150, 5);
    let mut checked_level0 = 0;
    for i in 0..p.n_items {
        let g = penumbra::generate_one(&p, i).unwrap();
        let scene = &g.scene;
        let clean = render::draw_clean(scene);
        let bg = scene.style.background();
        // Each object's center pixel shows it (or the object drawn over it there).
        for o in &scene.objects {
            let (cx, cy) = (o.x as u32, o.y as u32);
            let top = topmost_at(scene, cx, cy).expect("an object covers its own center");
            let (main, pattern) = render::object_colors(scene, top);
            let px = clean.get_pixel(cx, cy).0;
            assert!(px == main || px == pattern, "{}: object {} center", g.item.id, o.id);
            assert!(o.visible_fraction >= p.min_visible - 1e-3, "visible fraction is quantized to 1/1024");
        }
        // A pixel no object covers is background.
        'bgscan: for y in (0..scene.height).step_by(7) {
            for x in (0..scene.width).step_by(7) {
                if topmost_at(scene, x, y).is_none() {
                    assert_eq!(clean.get_pixel(x, y).0, bg);
                    break 'bgscan;
                }
            }
        }
        // Level 0 has no blur or noise: the PNG decodes to exactly the clean drawing.
        let decoded = image::load_from_memory(g.item.image.as_ref().unwrap().bytes.as_ref().unwrap()).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (p.image_size, p.image_size));
        if scene.level == 0 {
            assert_eq!(decoded, clean, "{}", g.item.id);
            checked_level0 += 1;
        }
    }
    assert!(checked_level0 > 10);
}

/// Real uncertainty: a nearest-palette-color reader of each object's visible pixels gets worse
/// as the level rises (it is near perfect at level 0).
#[test]
fn penumbra_color_reading_gets_harder_with_level() {
    let p = params(500, 9);
    let mut right = [0usize; 5];
    let mut total = [0usize; 5];
    for i in 0..p.n_items {
        let g = penumbra::generate_one(&p, i).unwrap();
        let scene = &g.scene;
        let img = image::load_from_memory(g.item.image.as_ref().unwrap().bytes.as_ref().unwrap()).unwrap().to_rgb8();
        for o in &scene.objects {
            // The evidence a small reader gets: the pixel at the object's center, if it is on top there.
            if topmost_at(scene, o.x as u32, o.y as u32).map(|t| t.id) != Some(o.id) {
                continue;
            }
            let px = img.get_pixel(o.x as u32, o.y as u32).0;
            let guess = Color::ALL
                .iter()
                .min_by_key(|c| {
                    let probe = Object { color: **c, texture: Texture::Solid, ..o.clone() };
                    let (main, pattern) = render::object_colors(scene, &probe);
                    let d = |q: [u8; 3]| (0..3).map(|k| (px[k] as i32 - q[k] as i32).pow(2)).sum::<i32>();
                    d(main).min(d(pattern))
                })
                .unwrap();
            let l = scene.level as usize;
            total[l] += 1;
            right[l] += (*guess == o.color) as usize;
        }
    }
    let acc: Vec<f64> = (0..5).map(|l| right[l] as f64 / total[l] as f64).collect();
    eprintln!("center-pixel color accuracy by level: {acc:.3?}");
    assert!(acc[0] > 0.95, "{acc:?}");
    assert!(acc[4] < acc[0] - 0.2, "level 4 must be clearly harder: {acc:?}");
    assert!(acc[4] <= acc[2] && acc[2] <= acc[0], "{acc:?}");
}

// ---------------------------------------------------------------- Penumbra: rate

/// `cargo test --test data penumbra_rate -- --ignored --nocapture`: items/s on 2 threads.
#[test]
#[ignore]
fn penumbra_rate_on_two_threads() {
    let n: usize = std::env::var("PENUMBRA_RATE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let p = params(n, 2026);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let cpu0 = process_cpu_seconds();
    let t = std::time::Instant::now();
    let items = pool.install(|| generate(&p));
    let secs = t.elapsed().as_secs_f64();
    // CPU time too: on a shared machine the wall clock measures the neighbours' load; items per
    // CPU-second × 2 is the rate two free cores would give.
    let cpu = process_cpu_seconds() - cpu0;
    let bytes: usize = items.iter().map(|i| i.image.as_ref().unwrap().bytes.as_ref().unwrap().len()).sum();
    let t2 = std::time::Instant::now();
    let batch = items_to_record_batch(&items).unwrap();
    let secs_batch = t2.elapsed().as_secs_f64();
    eprintln!(
        "penumbra: {n} items in {secs:.2} s wall on 2 threads = {:.0} items/s; {cpu:.2} CPU-s = {:.0} items/s on 2 free cores; PNG {:.1} KB/item; to RecordBatch {:.2} s ({} rows)",
        n as f64 / secs,
        2.0 * n as f64 / cpu,
        bytes as f64 / n as f64 / 1024.0,
        secs_batch,
        batch.num_rows()
    );
}

/// User + system CPU time of this process, from /proc/self/stat (Linux), in seconds.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    ticks / hz
}

// ---------------------------------------------------------------- loaders on official-format fixtures

use mmboundary::data::annotated::{self, AnnotatedKind, AnnotatedParams, DuplicatePolicy};
use mmboundary::data::aokvqa::{self, AokvqaParams};
use mmboundary::data::culturalvqa::{self, CulturalvqaParams};
use mmboundary::data::scienceqa::{self, ScienceqaParams};
use mmboundary::data::{DataError, SkipPolicy};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap()
}

/// Copy a fixture folder into a temp dir so a test can break it.
fn scratch_copy(sub: &str) -> tempfile::TempDir {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let t = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &t);
            } else {
                std::fs::copy(e.path(), t).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&fixtures().join(sub), dir.path());
    dir
}

#[test]
fn aokvqa_fixture_loads_as_the_reference_says() {
    let dir = fixtures().join("aokvqa");
    let loaded = aokvqa::load_aokvqa(&dir.join("aokvqa_v1p0_val.json"), Some(&dir.join("coco")), &AokvqaParams::default()).unwrap();
    let exp = expected()["aokvqa"].as_array().unwrap().clone();
    assert_eq!(loaded.items.len(), exp.len());
    assert!(loaded.report.skipped.is_empty());
    for (it, e) in loaded.items.iter().zip(&exp) {
        assert_eq!(it.id, e["id"].as_str().unwrap());
        assert_eq!(it.source, "aokvqa");
        assert_eq!(it.split, e["split"].as_str().unwrap());
        assert_eq!(it.answer.as_deref(), e["answer"].as_str());
        assert_eq!(it.correct_choice, Some(e["correct_choice"].as_u64().unwrap() as u32));
        assert_eq!(it.direct_answers.len(), 10);
        let img = it.image.as_ref().unwrap();
        let rel = e["image_path"].as_str().unwrap();
        assert_eq!(img.path.as_deref(), Some(rel));
        assert_eq!(img.bytes.as_deref().unwrap(), std::fs::read(dir.join("coco").join(rel)).unwrap().as_slice(), "bytes kept as on disk");
        assert_eq!(it.meta["rationales"].as_array().unwrap().len(), 3);
    }
    // Into the one schema and back.
    let batch = items_to_record_batch(&loaded.items).unwrap();
    assert_eq!(items_from_record_batch(&batch).unwrap(), loaded.items);
    // Without a COCO folder: no images, and the report says so.
    let bare = aokvqa::load_aokvqa(&dir.join("aokvqa_v1p0_val.json"), None, &AokvqaParams::default()).unwrap();
    assert!(bare.items.iter().all(|i| i.image.is_none()));
    assert_eq!(bare.report.notes["images_not_requested"], 3);
}

#[test]
fn aokvqa_missing_image_and_malformed_records_are_errors_or_counted_skips() {
    let tmp = scratch_copy("aokvqa");
    std::fs::remove_file(tmp.path().join("coco/val2017/000000000202.jpg")).unwrap();
    let json = tmp.path().join("aokvqa_v1p0_val.json");
    let coco = tmp.path().join("coco");
    let err = aokvqa::load_aokvqa(&json, Some(&coco), &AokvqaParams::default()).unwrap_err();
    assert!(matches!(err, DataError::MissingImage { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("qA2") && msg.contains("000000000202.jpg") && msg.contains("aokvqa_v1p0_val.json"), "{msg}");
    let skip = AokvqaParams { on_bad_record: SkipPolicy::SkipAndCount, ..Default::default() };
    let loaded = aokvqa::load_aokvqa(&json, Some(&coco), &skip).unwrap();
    assert_eq!(loaded.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["qA1", "qA3"]);
    assert_eq!(loaded.report.skip_count(), 1);
    assert!(loaded.report.skipped[0].record.contains("qA2"));

    // Malformed: a record without `question`, one with an out-of-range answer index, a repeated id.
    let mut recs: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    recs[0].as_object_mut().unwrap().remove("question");
    recs[1]["correct_choice_idx"] = serde_json::json!(7);
    recs.push(recs[2].clone());
    std::fs::write(&json, serde_json::to_string(&recs).unwrap()).unwrap();
    let err = aokvqa::load_aokvqa(&json, None, &AokvqaParams::default()).unwrap_err().to_string();
    assert!(err.contains("record #0 (qA1)") && err.contains("`question` is missing"), "{err}");
    let loaded = aokvqa::load_aokvqa(&json, None, &skip).unwrap();
    assert_eq!(loaded.items.len(), 1);
    let reasons: Vec<&str> = loaded.report.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[1].contains("correct_choice_idx") && reasons[1].contains("found 7"), "{reasons:?}");
    assert!(reasons[2].contains("qA3") && reasons[2].contains("more than once"), "{reasons:?}");
}

#[test]
fn scienceqa_fixture_loads_image_questions_only() {
    let dir = fixtures().join("scienceqa");
    let loaded = scienceqa::load_scienceqa(
        &dir.join("problems.json"),
        &dir.join("pid_splits.json"),
        &dir.join("images"),
        &ScienceqaParams::default(),
    )
    .unwrap();
    let e = expected();
    let exp = e["scienceqa"].as_array().unwrap();
    assert_eq!(loaded.items.len(), exp.len());
    assert_eq!(loaded.report.notes["text_only"], e["scienceqa_text_only"].as_u64().unwrap() as usize);
    for (it, e) in loaded.items.iter().zip(exp) {
        assert_eq!(it.id, e["id"].as_str().unwrap());
        assert_eq!(it.split, e["split"].as_str().unwrap());
        assert_eq!(it.answer.as_deref(), e["answer"].as_str());
        assert_eq!(it.correct_choice, Some(e["correct_choice"].as_u64().unwrap() as u32));
        let rel = e["image_path"].as_str().unwrap();
        let img = it.image.as_ref().unwrap();
        assert_eq!(img.path.as_deref(), Some(rel));
        assert_eq!(img.bytes.as_deref().unwrap(), std::fs::read(dir.join("images").join(rel)).unwrap().as_slice());
        assert!(it.meta.contains_key("hint") && it.meta.contains_key("lecture"));
    }
    // A missing image names the problem; an unknown split is an error.
    let tmp = scratch_copy("scienceqa");
    std::fs::remove_file(tmp.path().join("images/val/3/image.png")).unwrap();
    let load = |p: &ScienceqaParams| {
        scienceqa::load_scienceqa(&tmp.path().join("problems.json"), &tmp.path().join("pid_splits.json"), &tmp.path().join("images"), p)
    };
    let err = load(&ScienceqaParams::default()).unwrap_err().to_string();
    assert!(err.contains("record 3") && err.contains("image.png"), "{err}");
    let skipped = load(&ScienceqaParams { on_bad_record: SkipPolicy::SkipAndCount, ..Default::default() }).unwrap();
    assert_eq!(skipped.items.len(), 2);
    assert_eq!(skipped.report.skip_count(), 1);
    let err = load(&ScienceqaParams { splits: vec!["dev".into()], ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("\"dev\" is not in the file"), "{err}");
}

#[test]
fn culturalvqa_parquet_shards_load_in_order_with_images() {
    let d = fixtures().join("culturalvqa/data");
    let a = d.join("test-00000-of-00002.parquet");
    let b = d.join("test-00001-of-00002.parquet");
    let loaded = culturalvqa::load_culturalvqa(&[&a, &b], &CulturalvqaParams::default()).unwrap();
    let exp = expected()["culturalvqa"].as_array().unwrap().clone();
    assert_eq!(loaded.items.len(), exp.len());
    for (it, e) in loaded.items.iter().zip(&exp) {
        assert_eq!(it.id, e["id"].as_str().unwrap());
        assert_eq!(it.question, e["question"].as_str().unwrap());
        assert_eq!(it.split, "test");
        let img = it.image.as_ref().unwrap();
        assert_eq!(img.path.as_deref(), e["image_path"].as_str());
        // The bytes are the JPEG the reference wrote: its pixels have the reference color.
        let px = image::load_from_memory(img.bytes.as_ref().unwrap()).unwrap().to_rgb8().get_pixel(3, 3).0;
        let want: Vec<i32> = e["color"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
        for c in 0..3 {
            assert!((px[c] as i32 - want[c]).abs() <= 6, "{}: {px:?} vs {want:?}", it.id);
        }
    }
}

#[test]
fn annotated_fixture_quirks_standalone_and_joined() {
    let e = expected();
    let ea = &e["annotated_aokvqa"];
    let file = fixtures().join("annotated/aokvqa_val_mmb.json");
    let p = AnnotatedParams::default();
    let loaded = annotated::load_annotated(&file, &p).unwrap();
    let ids: Vec<&str> = loaded.items.iter().map(|i| i.id.as_str()).collect();
    let want: Vec<&str> = ea["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(ids, want);
    let lens: Vec<usize> = loaded.items.iter().map(|i| i.chain.perception.len()).collect();
    let want_lens: Vec<usize> = ea["perception_lens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(lens, want_lens);
    assert_eq!(loaded.report.skip_count(), ea["skipped"].as_u64().unwrap() as usize);
    assert_eq!(loaded.report.notes["missing_image_level"], ea["missing_image_level"].as_u64().unwrap() as usize);
    assert!(loaded.items.iter().all(|i| i.image.is_none()));
    assert_eq!(loaded.items[0].chain.reasoning.last().unwrap(), "So, the answer is bed.");
    assert_eq!(loaded.items[0].answer.as_deref(), Some("bed"));

    // Duplicate policies.
    let first = annotated::load_annotated(&file, &AnnotatedParams { duplicates: DuplicatePolicy::KeepFirst, ..p.clone() }).unwrap();
    assert_eq!(first.items.len(), 3);
    assert_eq!(first.report.skip_count(), 2);
    let err = annotated::load_annotated(&file, &AnnotatedParams { duplicates: DuplicatePolicy::Error, ..p.clone() }).unwrap_err();
    assert!(matches!(err, DataError::DuplicateId { ref id, .. } if id == "qA1"), "{err}");
    assert!(err.to_string().contains("record #2"), "{err}");

    // Join onto the A-OKVQA fixture: the annotation for qZZ has no match.
    let coco = fixtures().join("aokvqa");
    let data = aokvqa::load_aokvqa(&coco.join("aokvqa_v1p0_val.json"), Some(&coco.join("coco")), &AokvqaParams::default()).unwrap();
    let ann = annotated::read_annotations(&file, &p).unwrap();
    assert_eq!(ann.kind, AnnotatedKind::Aokvqa);
    let err = annotated::attach_chains(data.items.clone(), &ann, &p).unwrap_err();
    assert!(matches!(err, DataError::UnmatchedId { ref id, .. } if id == "qZZ"), "{err}");
    let sp = AnnotatedParams { on_bad_record: SkipPolicy::SkipAndCount, ..p.clone() };
    let joined = annotated::attach_chains(data.items.clone(), &ann, &sp).unwrap();
    let ids: Vec<&str> = joined.items.iter().map(|i| i.id.as_str()).collect();
    let want: Vec<&str> = ea["join_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(ids, want);
    assert!(joined.items.iter().all(|i| i.image.is_some() && !i.chain.reasoning.is_empty()));
    assert_eq!(joined.report.notes["unannotated_items"], 1);
    assert!(joined.report.skipped.iter().any(|s| s.reason.contains("qZZ")));
    let keep = annotated::attach_chains(data.items, &ann, &AnnotatedParams { keep_unannotated: true, ..sp }).unwrap();
    assert_eq!(keep.items.len(), 4);

    // CulturalVQA: annotations join on the row index of the Parquet shards.
    let d = fixtures().join("culturalvqa/data");
    let (a, b) = (d.join("test-00000-of-00002.parquet"), d.join("test-00001-of-00002.parquet"));
    let cv = culturalvqa::load_culturalvqa(&[&a, &b], &CulturalvqaParams::default()).unwrap();
    let cann = annotated::read_annotations(&fixtures().join("annotated/culturalvqa_cvqa_mmb.json"), &p).unwrap();
    assert_eq!(cann.kind, AnnotatedKind::CulturalVqa);
    let joined = annotated::attach_chains(cv.items, &cann, &p).unwrap();
    let ids: Vec<&str> = joined.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["0", "2"]);
    assert_eq!(joined.items[1].chain.reasoning, ["Lamps are lit for it.", "So, the answer is 'Diwali'."]);
    assert_eq!(joined.items[1].question, "Which festival is shown?");
}

/// The paper's annotated chains are CC BY-NC and not shipped: the quirks are covered on fixtures in their
/// format above; this checks the counts on the real files where a user has them.
#[test]
#[ignore = "needs the paper's annotated chains (not shipped): MMB_ANNOTATED_DIR=<folder> cargo test --test data -- --ignored"]
fn annotated_real_files_load_with_their_quirks_counted() {
    let dir = PathBuf::from(std::env::var_os("MMB_ANNOTATED_DIR").expect("MMB_ANNOTATED_DIR: the folder of aokvqa_val_mmb.json"));
    let e = expected();
    for name in ["aokvqa_val_mmb.json", "culturalvqa_cvqa_mmb.json"] {
        let want = &e["real_annotated"][name];
        let n = |k: &str| want[k].as_u64().unwrap() as usize;
        let file = dir.join(name);
        let loaded = annotated::load_annotated(&file, &AnnotatedParams::default()).unwrap();
        assert_eq!(loaded.items.len(), n("items"), "{name}");
        assert_eq!(loaded.report.skip_count(), n("empty_reasoning"), "{name}");
        assert_eq!(loaded.report.notes.get("missing_image_level").copied().unwrap_or(0), n("missing_image_level"), "{name}");
        assert_eq!(loaded.report.notes.get("empty_perception").copied().unwrap_or(0), n("empty_perception"), "{name}");
        assert_eq!(loaded.report.notes.get("duplicate_id").copied().unwrap_or(0), n("repeated_ids"), "{name}");
        let ids: HashSet<&str> = loaded.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids.len(), loaded.items.len(), "{name}: ids unique after suffixing");
        let so = loaded.items.iter().filter(|i| i.chain.reasoning.last().is_some_and(|s| s.starts_with("So, the answer is"))).count();
        assert_eq!(so, n("last_is_so_the_answer"), "{name}: sentence order kept");
        let batch = items_to_record_batch(&loaded.items).unwrap();
        assert_eq!(items_from_record_batch(&batch).unwrap(), loaded.items);
        let first =
            annotated::load_annotated(&file, &AnnotatedParams { duplicates: DuplicatePolicy::KeepFirst, ..Default::default() }).unwrap();
        assert_eq!(first.items.len(), n("unique_ids"), "{name}");
    }
}

// ---------------------------------------------------------------- `mmb data` (the CLI module, compiled here)

/// `src/cli/data.rs` refers to the library as `crate::data`; this alias lets the test crate
/// compile it as it is, without the binary.
mod data {
    pub use mmboundary::data::*;
}
#[path = "../src/cli/data.rs"]
mod cli_data;

#[derive(clap::Parser)]
struct DataCli {
    #[command(flatten)]
    args: cli_data::DataArgs,
}

#[test]
fn cli_generate_writes_images_sheet_and_text() {
    use clap::Parser;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gen");
    let cli = DataCli::try_parse_from([
        "data",
        "generate",
        "-n",
        "40",
        "--seed",
        "5",
        "--threads",
        "2",
        "-o",
        out.to_str().unwrap(),
        "--per-level",
        "3",
    ])
    .unwrap();
    cli_data::run(cli.args).unwrap();
    let pngs = std::fs::read_dir(out.join("images")).unwrap().count();
    assert_eq!(pngs, 40);
    // The written PNG is the item's image.
    let p = params(40, 5);
    let g = penumbra::generate_one(&p, 12).unwrap();
    let written = std::fs::read(out.join("images").join(format!("{}.png", g.item.id))).unwrap();
    assert_eq!(&written, g.item.image.as_ref().unwrap().bytes.as_ref().unwrap());
    // Contact sheet: one row per level present, 3 tiles per row.
    let sheet = image::open(out.join("contact_sheet.png")).unwrap().to_rgb8();
    let items = generate(&p);
    let levels: HashSet<u32> = items.iter().filter_map(|i| i.difficulty).collect();
    assert_eq!(sheet.dimensions(), (16 + 4 + 3 * (96 + 4) + 4, 4 + levels.len() as u32 * (96 + 4)));
    let text = std::fs::read_to_string(out.join("show.txt")).unwrap();
    assert!(text.contains(&format!("images/{}.png", g.item.id)));
    assert!(text.contains(&g.item.question) && text.contains("reasoning (Reasoning_level):"));
    // Bad params are refused with a reason.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "image_size = 8\n").unwrap();
    let cli = DataCli::try_parse_from([
        "data",
        "sheet",
        "-n",
        "5",
        "--params",
        bad.to_str().unwrap(),
        "-o",
        tmp.path().join("s.png").to_str().unwrap(),
    ])
    .unwrap();
    let err = format!("{:#}", cli_data::run(cli.args).unwrap_err());
    assert!(err.contains("image_size") && err.contains("found 8"), "{err}");
}

/// The committed benchmark / int8-calibration corpus is exactly what its documented command makes.
#[test]
fn the_committed_corpus_is_what_mmb_data_corpus_makes() {
    use clap::Parser;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("corpus.txt");
    let argv = ["data", "corpus", "-n", "3000", "--sentences", "4000", "-o", out.to_str().unwrap()];
    cli_data::run(DataCli::try_parse_from(argv).unwrap().args).unwrap();
    let committed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/corpus/penumbra_sentences.txt");
    let (made, shipped) = (std::fs::read_to_string(&out).unwrap(), std::fs::read_to_string(&committed).unwrap());
    assert_eq!(made.lines().count(), 4000);
    assert!(made == shipped, "{} differs from `mmb data corpus -n 3000 --sentences 4000`", committed.display());
    // Too few items for the sentences asked for is an error, not a short corpus.
    let argv = ["data", "corpus", "-n", "2", "--sentences", "4000", "-o", out.to_str().unwrap()];
    let err = cli_data::run(DataCli::try_parse_from(argv).unwrap().args).unwrap_err().to_string();
    assert!(err.contains("4000 asked for"), "{err}");
}

#[test]
fn show_lists_question_options_and_chain() {
    let g = penumbra::generate_one(&params(10, 1), 3).unwrap();
    let text = mmboundary::data::sheet::show(&g.item, Some("x/y.png"));
    assert!(text.contains("image:    x/y.png"));
    let marked = format!("* ({}) {}", (b'A' + g.question.correct_choice as u8) as char, g.question.answer);
    assert!(text.contains(&marked), "{text}");
    for s in g.item.chain.sentences() {
        assert!(text.contains(s));
    }
}

/// Run `mmb data …` before the binary wires it: `MMB_DATA_ARGS="generate -n 1000 -o /tmp/p"
/// cargo test --test data run_data_cli_from_env -- --ignored --nocapture`.
#[test]
#[ignore]
fn run_data_cli_from_env() {
    use clap::Parser;
    let args = std::env::var("MMB_DATA_ARGS").expect("set MMB_DATA_ARGS, e.g. \"sheet -n 200 -o sheet.png\"");
    let argv = std::iter::once("data").chain(args.split_whitespace());
    cli_data::run(DataCli::try_parse_from(argv).unwrap().args).unwrap();
}

/// Writes a Penumbra sample as Parquet with the `huggingface` metadata, the way the store will,
/// for `scripts/check_hf_parquet.py` to read with Hugging Face `datasets`:
/// `MMB_HF_SAMPLE=/tmp/p.parquet cargo test --test data write_hf_sample_parquet -- --ignored`.
#[test]
#[ignore]
fn write_hf_sample_parquet() {
    use std::sync::Arc;
    let path = std::env::var("MMB_HF_SAMPLE").expect("set MMB_HF_SAMPLE to the output path");
    let n = std::env::var("MMB_HF_SAMPLE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let items = generate(&params(n, 0));
    let batch = items_to_record_batch(&items).unwrap();
    let mut md = std::collections::HashMap::new();
    md.insert("huggingface".to_string(), mmboundary::data::hf_metadata_json());
    let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(md));
    let batch = batch.with_schema(schema.clone()).unwrap();
    let f = std::fs::File::create(&path).unwrap();
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(100)).build();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn penumbra_params_round_trip_through_toml_and_partial_files_default() {
    let p = PenumbraParams::default();
    let text = toml::to_string(&p).unwrap();
    let back: PenumbraParams = toml::from_str(&text).unwrap();
    assert_eq!(back, p);
    let partial: PenumbraParams = toml::from_str("image_size = 64\nrelation_margin = 0.1\n").unwrap();
    assert_eq!((partial.image_size, partial.relation_margin), (64, 0.1));
    assert_eq!(partial.ladder, p.ladder);
    let bad = PenumbraParams { question_weights: vec![1.0; 3], ..p.clone() };
    assert!(bad.validate().unwrap_err().to_string().contains("question_weights"));
    let bad = PenumbraParams { splits: penumbra::SplitFractions { train: 0.5, val: 0.1, test: 0.1, ood: 0.1 }, ..p };
    assert!(bad.validate().unwrap_err().to_string().contains("summing to 1"));
}

/// The demo MLLM's extra training text: every object's perception sentence in reading order, and the
/// whole-scene drills, all read off the scene graph.
#[test]
fn penumbra_scene_descriptions_and_drills_follow_the_graph() {
    let p = params(80, 5);
    for i in 0..p.n_items {
        let g = penumbra::generate_one(&p, i).unwrap();
        let s = &g.scene;
        let mut objs = s.objects.clone();
        objs.sort_by(|a, b| a.y.partial_cmp(&b.y).unwrap().then(a.x.partial_cmp(&b.x).unwrap()));
        let expected: Vec<String> = objs
            .iter()
            .map(|o| {
                let words = [o.size.word(), o.color.word(), o.texture.adjective(), o.shape.word()].join(" ");
                format!("There is a {words} {}.", region(o, s.width, s.height))
            })
            .collect();
        assert_eq!(penumbra::questions::describe(s), expected, "item {i}");
        let drills = penumbra::questions::perception_drills(s);
        assert_eq!(drills[0].1, format!("There are {} objects.", s.objects.len()));
        let listed = |answer: &str, prefix: &str| -> Vec<String> {
            answer.strip_prefix(prefix).unwrap().trim_end_matches('.').split(", ").map(str::to_string).collect()
        };
        let set = |v: Vec<&str>| v.into_iter().map(str::to_string).collect::<std::collections::BTreeSet<String>>();
        for (k, prefix, words) in [
            (1, "The colors are ", set(s.objects.iter().map(|o| o.color.word()).collect())),
            (2, "The shapes are ", set(s.objects.iter().map(|o| o.shape.word()).collect())),
            (3, "The patterns are ", set(s.objects.iter().map(|o| o.texture.adjective()).collect())),
        ] {
            let got = listed(&drills[k].1, prefix);
            assert_eq!(got.len(), words.len(), "no repeats: {:?}", drills[k]);
            assert_eq!(got.into_iter().collect::<std::collections::BTreeSet<_>>(), words, "{:?}", drills[k]);
        }
        // Object drills: "Describe the <words>." names exactly one object (every word is one of its size,
        // color, pattern or shape words, and no other object has them all), and the answer is that object's
        // perception sentence; objects with no short unique name are left out, and no object is asked twice.
        let object_drills = penumbra::questions::object_drills(s);
        let mut asked = std::collections::BTreeSet::new();
        for (prompt, answer) in &object_drills {
            let words: Vec<&str> = prompt.strip_prefix("Describe the ").unwrap().strip_suffix('.').unwrap().split(' ').collect();
            // "object" stands for any shape
            let has = |o: &penumbra::Object| {
                let own = [o.size.word(), o.color.word(), o.texture.adjective(), o.shape.word()];
                words.iter().all(|w| *w == "object" || own.contains(w))
            };
            let named: Vec<&penumbra::Object> = s.objects.iter().filter(|o| has(o)).collect();
            assert_eq!(named.len(), 1, "item {i}: {prompt:?} names {} objects", named.len());
            let o = named[0];
            assert!(asked.insert(o.id), "item {i}: object {} asked twice", o.id);
            let full = [o.size.word(), o.color.word(), o.texture.adjective(), o.shape.word()].join(" ");
            assert_eq!(answer, &format!("There is a {full} {}.", region(o, s.width, s.height)), "item {i}");
        }
        assert!(!object_drills.is_empty(), "item {i}: some object of every scene has a short unique name");
        let with = penumbra::questions::scene_examples(s, Some("Describe."), true, true);
        assert_eq!(with.len(), 1 + drills.len() + object_drills.len());
        assert_eq!(&with[1 + drills.len()..], &object_drills[..]);
    }
}

/// The object drills of one hand-made scene, written out by hand: two red circles need their sizes, the
/// one square its shape alone.
#[test]
fn object_drills_of_a_hand_made_scene() {
    use penumbra::{Color, Object, Scene, Shape, Size, Style, Texture};
    let obj =
        |id, shape, size, texture, x, y| Object { id, shape, color: Color::Red, size, texture, x, y, radius: 6.0, visible_fraction: 1.0 };
    let scene = Scene {
        width: 96,
        height: 96,
        style: Style::Plain,
        level: 0,
        objects: vec![
            obj(0, Shape::Circle, Size::Small, Texture::Solid, 10.0, 10.0),
            obj(1, Shape::Circle, Size::Large, Texture::Striped, 80.0, 50.0),
            obj(2, Shape::Square, Size::Small, Texture::Solid, 50.0, 85.0),
        ],
        noise_sigma: 0.0,
        blur_sigma: 0.0,
        contrast: 1.0,
        noise_seed: 0,
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        penumbra::questions::object_drills(&scene),
        vec![
            pair("Describe the small circle.", "There is a small red solid circle at the top left."),
            pair("Describe the large circle.", "There is a large red striped circle on the right."),
            pair("Describe the square.", "There is a small red solid square at the bottom."),
        ]
    );
}

// ---------------------------------------------------------------- loader bugs of issue 16 (crafted files)

fn bad() -> PathBuf {
    fixtures().join("bad")
}

fn skip_all() -> SkipPolicy {
    SkipPolicy::SkipAndCount
}

#[test]
fn annotated_suffixed_repeat_never_takes_an_id_the_file_uses() {
    // ids qX, qX, qX#1: the repeat of qX must not become a second qX#1.
    let loaded = annotated::load_annotated(&bad().join("annotated_suffix.json"), &AnnotatedParams::default()).unwrap();
    let ids: Vec<&str> = loaded.items.iter().map(|i| i.id.as_str()).collect();
    let want: Vec<String> = serde_json::from_value(expected()["bad_annotated_suffix_ids"].clone()).unwrap();
    assert_eq!(ids, want);
    assert_eq!(loaded.items[1].chain.perception, ["Look 1."], "the repeat keeps its own chain");
    assert_eq!(loaded.items[2].chain.perception, ["Look 2."]);
    assert_eq!(loaded.report.notes["duplicate_id"], 1);
}

#[test]
fn scienceqa_duplicate_problem_ids_are_refused_not_overwritten() {
    let d = bad().join("scienceqa_dup");
    let load = |p: &ScienceqaParams| scienceqa::load_scienceqa(&d.join("problems.json"), &d.join("pid_splits.json"), &d.join("images"), p);
    let p = ScienceqaParams { splits: vec!["train".into()], ..Default::default() };
    let err = load(&p).unwrap_err().to_string();
    assert!(err.contains("problems.json") && err.contains("record 1") && err.contains("occurs 2 times"), "{err}");
    let loaded = load(&ScienceqaParams { on_bad_record: skip_all(), ..p }).unwrap();
    assert_eq!(loaded.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["3"]);
    assert_eq!(loaded.report.skip_count(), 1);
    assert_eq!(loaded.report.skipped[0].record, "1");
}

#[test]
fn missing_or_null_rationales_are_counted_and_kept_as_null() {
    let loaded = aokvqa::load_aokvqa(&bad().join("aokvqa_no_rationales.json"), None, &AokvqaParams::default()).unwrap();
    assert_eq!(loaded.items.len(), 3);
    assert_eq!(loaded.report.notes["missing_rationales"], expected()["bad_missing_rationales"].as_u64().unwrap() as usize);
    assert_eq!(loaded.items[0].meta["rationales"], serde_json::Value::Null);
    assert_eq!(loaded.items[1].meta["rationales"], serde_json::Value::Null);
    assert_eq!(loaded.items[2].meta["rationales"].as_array().unwrap().len(), 3);
}

#[test]
fn scienceqa_choice_count_and_empty_image_name_are_blamed_on_the_right_field() {
    let d = bad().join("scienceqa_bad");
    let load = |p: &ScienceqaParams| scienceqa::load_scienceqa(&d.join("problems.json"), &d.join("pid_splits.json"), &d.join("images"), p);
    let p = ScienceqaParams { splits: vec!["train".into()], ..Default::default() };
    let err = load(&p).unwrap_err().to_string();
    assert!(err.contains("record 10") && err.contains("`choices`: expected at least 2 options, found 1"), "{err}");
    let loaded = load(&ScienceqaParams { on_bad_record: skip_all(), ..p }).unwrap();
    assert_eq!(loaded.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["13"]);
    let by_record: std::collections::HashMap<&str, &str> =
        loaded.report.skipped.iter().map(|s| (s.record.as_str(), s.reason.as_str())).collect();
    assert_eq!(by_record.len(), 3, "{by_record:?}");
    assert!(by_record["10"].contains("`choices`") && by_record["10"].contains("found 1"), "{by_record:?}");
    assert!(
        by_record["11"].contains("`choices`") && by_record["11"].contains("found 0") && !by_record["11"].contains("`answer`"),
        "{by_record:?}"
    );
    assert!(
        by_record["12"].contains("`image`") && by_record["12"].contains("\"\"") && !by_record["12"].contains("directory"),
        "{by_record:?}"
    );
    assert!(by_record.values().all(|r| r.contains("problems.json")), "{by_record:?}");
}

#[test]
fn scienceqa_image_that_is_a_folder_names_the_record() {
    // The image name resolves to a folder: the error names problems.json and the problem.
    let tmp = scratch_copy("bad/scienceqa_bad");
    let probs = tmp.path().join("problems.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&probs).unwrap()).unwrap();
    v["13"]["image"] = "sub".into();
    std::fs::write(&probs, v.to_string()).unwrap();
    std::fs::create_dir_all(tmp.path().join("images/train/13/sub")).unwrap();
    let p = ScienceqaParams { splits: vec!["train".into()], on_bad_record: skip_all(), ..Default::default() };
    let loaded = scienceqa::load_scienceqa(&probs, &tmp.path().join("pid_splits.json"), &tmp.path().join("images"), &p).unwrap();
    assert!(loaded.items.is_empty());
    let s = loaded.report.skipped.iter().find(|s| s.record == "13").expect("problem 13 is skipped");
    assert!(s.reason.contains("problems.json") && s.reason.contains("sub") && s.reason.contains("not a file"), "{s:?}");
}

#[test]
fn culturalvqa_undecodable_images_and_non_utf8_questions_are_bad_records() {
    let f = bad().join("culturalvqa_bad.parquet");
    let err = culturalvqa::load_culturalvqa(&[&f], &CulturalvqaParams::default()).unwrap_err().to_string();
    assert!(err.contains("culturalvqa_bad.parquet") && err.contains("row 1") && err.contains("undecodable image"), "{err}");
    let loaded = culturalvqa::load_culturalvqa(&[&f], &CulturalvqaParams { on_bad_record: skip_all(), ..Default::default() }).unwrap();
    let want: Vec<String> = serde_json::from_value(expected()["bad_culturalvqa_kept_ids"].clone()).unwrap();
    assert_eq!(loaded.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), want);
    assert_eq!(loaded.items[0].question, "What is this dish?");
    let reasons: Vec<&str> = loaded.report.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[1].contains("row 2") && reasons[1].contains("not valid UTF-8") && !reasons[1].contains("null"), "{reasons:?}");
}

#[test]
fn culturalvqa_same_file_listed_twice_is_an_error() {
    let d = fixtures().join("culturalvqa/data");
    let a = d.join("test-00000-of-00002.parquet");
    let again = d.join("../data/test-00000-of-00002.parquet");
    let err = culturalvqa::load_culturalvqa(&[&a, &again], &CulturalvqaParams::default()).unwrap_err().to_string();
    assert!(err.contains("test-00000-of-00002.parquet") && err.contains("listed twice"), "{err}");
}
