//! Image–caption pairs for contrastive (CLIP-style) training: true captions from the scene graph,
//! each paired with a hard negative that makes exactly one attribute or relation false.

use rand::seq::SliceRandom;
use rand::Rng;

use super::scene::{Attribute, Color, Object, Relation, Scene, Shape, Size, Texture};

/// A copy of `o` with `attr` set to the value named `word`.
fn with_value(o: &Object, attr: Attribute, word: &str) -> Object {
    let mut c = o.clone();
    match attr {
        Attribute::Size => c.size = Size::from_word(word).expect("word from Size::ALL"),
        Attribute::Color => c.color = Color::from_word(word).expect("word from Color::ALL"),
        Attribute::Texture => c.texture = Texture::from_word(word).expect("word from Texture::ALL"),
        Attribute::Shape => c.shape = Shape::from_word(word).expect("word from Shape::ALL"),
    }
    c
}

fn same_kind(a: &Object, b: &Object) -> bool {
    a.size == b.size && a.color == b.color && a.texture == b.texture && a.shape == b.shape
}

/// `(captions, hard_negatives)`, aligned: `hard_negatives[i]` is `captions[i]` with one thing
/// made false, and is false of every object in the scene (not just the one described).
pub fn captions<R: Rng>(rng: &mut R, scene: &Scene, margin: f32, max_objects: usize) -> (Vec<String>, Vec<String>) {
    let mut pos = Vec::new();
    let mut neg = Vec::new();
    let mut described: Vec<&Object> = Vec::new();
    for o in &scene.objects {
        // One caption per kind of object (two identical circles make one caption).
        if described.len() >= max_objects || described.iter().any(|d| same_kind(d, o)) {
            continue;
        }
        described.push(o);
        let mut attrs = Attribute::ALL.to_vec();
        attrs.shuffle(rng);
        'attr: for attr in attrs {
            let mut values = attr.values();
            values.shuffle(rng);
            for v in values {
                if v == attr.value_of(o) {
                    continue;
                }
                let changed = with_value(o, attr, v);
                if scene.objects.iter().all(|x| !same_kind(x, &changed)) {
                    pos.push(format!("a {}", o.full_description()));
                    neg.push(format!("a {}", changed.full_description()));
                    break 'attr;
                }
            }
        }
    }
    // One relational caption, negated by flipping the relation.
    let n = scene.objects.len();
    let mut pairs: Vec<(usize, usize)> = (0..n).flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b))).collect();
    pairs.shuffle(rng);
    for (a, b) in pairs {
        let (oa, ob) = (&scene.objects[a], &scene.objects[b]);
        // Both kinds unique in the scene, so the flipped caption is false of every pair.
        let unique = |o: &Object| scene.objects.iter().filter(|x| same_kind(x, o)).count() == 1;
        if Relation::LeftOf.holds(oa, ob, margin) == Some(true) && unique(oa) && unique(ob) {
            pos.push(format!("a {} to the left of a {}", oa.full_description(), ob.full_description()));
            neg.push(format!("a {} to the right of a {}", oa.full_description(), ob.full_description()));
            break;
        }
    }
    (pos, neg)
}
