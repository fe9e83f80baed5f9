//! The scene graph: objects with shape, color, size, texture and position, and the relations
//! and counts the questions are asked about. Sampling is seeded; nothing here draws pixels
//! except the ownership raster used to measure occlusion.

use rand::seq::IndexedRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::difficulty::LevelKnobs;

macro_rules! vocab {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The word used in questions, chains and captions.
            pub fn word(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }
            pub fn from_word(w: &str) -> Option<$name> {
                match w { $($word => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

vocab!(Shape { Circle => "circle", Square => "square", Triangle => "triangle", Diamond => "diamond", Hexagon => "hexagon" });
vocab!(Color { Red => "red", Orange => "orange", Yellow => "yellow", Green => "green", Teal => "teal", Blue => "blue", Purple => "purple", Pink => "pink" });
vocab!(Size { Small => "small", Large => "large" });
vocab!(Texture { Solid => "solid", Striped => "striped", Checkered => "checkered" });

impl Shape {
    pub fn plural(self) -> String {
        format!("{}s", self.word())
    }

    /// How far the shape reaches from its center, in units of the object's radius.
    pub fn extent(self) -> f32 {
        match self {
            Shape::Circle => 1.0,
            Shape::Square => 0.9,
            Shape::Triangle => 1.45,
            Shape::Diamond => 1.25,
            Shape::Hexagon => 1.1,
        }
    }

    /// Whether the offset (dx, dy) from the center (image axes: y grows downwards) is inside.
    /// Sizes are chosen so that all shapes cover about the same area (≈ 2.8–3.1 r²).
    #[inline]
    pub fn contains(self, dx: f32, dy: f32, r: f32) -> bool {
        const SQRT3: f32 = 1.732_050_8;
        match self {
            Shape::Circle => dx * dx + dy * dy <= r * r,
            Shape::Square => dx.abs() <= 0.85 * r && dy.abs() <= 0.85 * r,
            Shape::Diamond => dx.abs() + dy.abs() <= 1.2 * r,
            Shape::Triangle => {
                // Equilateral, apex up, circumradius 1.45 r, centered on its centroid.
                let big_r = 1.45 * r;
                dy <= big_r / 2.0 && dx.abs() * SQRT3 <= dy + big_r
            }
            Shape::Hexagon => {
                // Flat-topped regular hexagon, circumradius 1.05 r.
                let big_r = 1.05 * r;
                dy.abs() <= SQRT3 / 2.0 * big_r && SQRT3 * dx.abs() + dy.abs() <= SQRT3 * big_r
            }
        }
    }
}

impl Color {
    /// The pure color, before contrast reduction.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [215, 40, 40],
            Color::Orange => [240, 130, 30],
            Color::Yellow => [230, 205, 40],
            Color::Green => [50, 155, 60],
            Color::Teal => [30, 150, 150],
            Color::Blue => [40, 80, 215],
            Color::Purple => [135, 60, 185],
            Color::Pink => [235, 110, 175],
        }
    }

    /// The colors a viewer most easily confuses with this one (used by the similar-colors knob
    /// and for hard multiple-choice distractors).
    pub fn similar(self) -> &'static [Color] {
        match self {
            Color::Red => &[Color::Orange, Color::Pink],
            Color::Orange => &[Color::Red, Color::Yellow],
            Color::Yellow => &[Color::Orange],
            Color::Green => &[Color::Teal],
            Color::Teal => &[Color::Green, Color::Blue],
            Color::Blue => &[Color::Teal, Color::Purple],
            Color::Purple => &[Color::Blue, Color::Pink],
            Color::Pink => &[Color::Red, Color::Purple],
        }
    }
}

impl Texture {
    /// The adjective in descriptions ("solid" objects are described without it in captions).
    pub fn adjective(self) -> &'static str {
        self.word()
    }
}

/// The rendering style of a scene. `Dark` is reserved for the out-of-distribution split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// Light warm-gray background.
    Plain,
    /// Dark slate background (a style never seen in train/val/test).
    Dark,
}

impl Style {
    pub fn background(self) -> [u8; 3] {
        match self {
            Style::Plain => [235, 232, 225],
            Style::Dark => [45, 45, 58],
        }
    }
}

/// One object of a scene. Positions are in pixels of the rendered image (y grows downwards).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Index in drawing order (later objects are drawn on top).
    pub id: usize,
    pub shape: Shape,
    pub color: Color,
    pub size: Size,
    pub texture: Texture,
    pub x: f32,
    pub y: f32,
    pub radius: f32,
    /// Fraction of the object's pixels not covered by objects drawn after it.
    pub visible_fraction: f32,
}

impl Object {
    /// "large red striped circle" (texture always named, so the description is exact).
    pub fn full_description(&self) -> String {
        format!("{} {} {} {}", self.size.word(), self.color.word(), self.texture.adjective(), self.shape.word())
    }

    /// Where the object is, in a 3×3 grid of the image: "at the top left", "in the center".
    pub fn region(&self, width: u32, height: u32) -> String {
        let col = ((self.x / width as f32) * 3.0).floor().clamp(0.0, 2.0) as usize;
        let row = ((self.y / height as f32) * 3.0).floor().clamp(0.0, 2.0) as usize;
        let names = [
            ["at the top left", "at the top", "at the top right"],
            ["on the left", "in the center", "on the right"],
            ["at the bottom left", "at the bottom", "at the bottom right"],
        ];
        names[row][col].to_string()
    }

    /// The pixel bounding box [x0, x1) × [y0, y1), clipped to the image.
    pub fn bbox(&self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let e = self.radius * self.shape.extent() + 1.0;
        let x0 = (self.x - e).floor().max(0.0) as u32;
        let y0 = (self.y - e).floor().max(0.0) as u32;
        let x1 = ((self.x + e).ceil().max(0.0) as u32).min(width);
        let y1 = ((self.y + e).ceil().max(0.0) as u32).min(height);
        (x0, x1, y0, y1)
    }

    /// Whether pixel (px, py) (its center) belongs to the object's shape.
    #[inline]
    pub fn covers(&self, px: u32, py: u32) -> bool {
        self.shape.contains(px as f32 + 0.5 - self.x, py as f32 + 0.5 - self.y, self.radius)
    }
}

/// A whole scene: what the image shows, how it is degraded, and under which style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub style: Style,
    /// Difficulty level the scene was sampled at (0 = easiest).
    pub level: u32,
    pub objects: Vec<Object>,
    /// Gaussian noise standard deviation, in 0–255 intensity units.
    pub noise_sigma: f32,
    /// Gaussian blur standard deviation in pixels (0 = none).
    pub blur_sigma: f32,
    /// How much of each object's color survives against the background (1 = full, 0 = none).
    pub contrast: f32,
    /// Seed of the pixel noise.
    pub noise_seed: u64,
}

impl Scene {
    /// For each `patch` × `patch` block of the image (row-major, as a ViT's patch grid), the index in
    /// `objects` of the object that shows in most of its pixels (later objects drawn on top), if it shows
    /// in at least a quarter of them; None for background. Dense labels for training an image tower.
    pub fn patch_owners(&self, patch: u32) -> Result<Vec<Option<usize>>, String> {
        if patch == 0 || self.width % patch != 0 || self.height % patch != 0 {
            return Err(format!("a {}×{} image does not split into {patch}-pixel patches", self.width, self.height));
        }
        let mut owner = vec![usize::MAX; (self.width * self.height) as usize];
        for (k, o) in self.objects.iter().enumerate() {
            let (x0, x1, y0, y1) = o.bbox(self.width, self.height);
            for py in y0..y1 {
                for px in x0..x1 {
                    if o.covers(px, py) {
                        owner[(py * self.width + px) as usize] = k;
                    }
                }
            }
        }
        let (cols, rows) = (self.width / patch, self.height / patch);
        let mut out = Vec::with_capacity((cols * rows) as usize);
        for r in 0..rows {
            for c in 0..cols {
                let mut counts = vec![0u32; self.objects.len()];
                for py in r * patch..(r + 1) * patch {
                    for px in c * patch..(c + 1) * patch {
                        if let Some(n) = counts.get_mut(owner[(py * self.width + px) as usize]) {
                            *n += 1;
                        }
                    }
                }
                // The most pixels; the topmost (later) object on a tie (max_by_key keeps the last maximum).
                let best = counts.iter().enumerate().max_by_key(|(_, &n)| n);
                out.push(best.filter(|(_, &n)| 4 * n >= patch * patch).map(|(k, _)| k));
            }
        }
        Ok(out)
    }
}

/// Horizontal and vertical relations, with a margin below which a relation is not asserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    pub const ALL: &'static [Relation] = &[Relation::LeftOf, Relation::RightOf, Relation::Above, Relation::Below];

    /// "to the left of", "above", …
    pub fn phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    pub fn opposite(self) -> Relation {
        match self {
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
        }
    }

    /// Signed distance along the relation's axis: positive when `a` is `self` of `b`.
    pub fn signed_gap(self, a: &Object, b: &Object) -> f32 {
        match self {
            Relation::LeftOf => b.x - a.x,
            Relation::RightOf => a.x - b.x,
            Relation::Above => b.y - a.y,
            Relation::Below => a.y - b.y,
        }
    }

    /// True / false when the centers are at least `margin` apart on the axis, None when too close to call.
    pub fn holds(self, a: &Object, b: &Object, margin: f32) -> Option<bool> {
        let g = self.signed_gap(a, b);
        if g >= margin {
            Some(true)
        } else if g <= -margin {
            Some(false)
        } else {
            None
        }
    }
}

/// What a scene sampler needs besides the level knobs.
pub(crate) struct SceneSpec<'a> {
    pub width: u32,
    pub height: u32,
    pub knobs: &'a LevelKnobs,
    /// (shape, color) pairs never seen in-distribution.
    pub held_out: &'a [(Shape, Color)],
    /// Out-of-distribution: objects draw from `held_out` half of the time (at least one does).
    pub ood: bool,
    /// Minimum visible fraction of every object (occlusion never hides an object's identity entirely).
    pub min_visible: f32,
}

/// Round to a multiple of 1/1024. Every float of a scene graph is such a dyadic number with few
/// digits, so it survives a JSON round trip exactly (serde_json parses short decimals exactly).
pub fn quantize(v: f32) -> f32 {
    (v * 1024.0).round() / 1024.0
}

fn is_held_out(held_out: &[(Shape, Color)], s: Shape, c: Color) -> bool {
    held_out.iter().any(|&(hs, hc)| hs == s && hc == c)
}

/// Sample the objects of a scene (rendering knobs are filled in by the caller).
pub(crate) fn sample_objects<R: Rng>(rng: &mut R, spec: &SceneSpec) -> Vec<Object> {
    let k = spec.knobs;
    let n_target = rng.random_range(k.min_objects..=k.max_objects.max(k.min_objects));
    let side = spec.width.min(spec.height) as f32;
    let small_r = quantize((k.small_radius * side).max(1.5));
    let large_r = quantize(small_r * k.large_ratio);
    let mut objects: Vec<Object> = Vec::with_capacity(n_target);
    // Ownership raster: for each pixel, the topmost object id (u8::MAX = background).
    let npix = (spec.width * spec.height) as usize;
    let mut owner = vec![u8::MAX; npix];
    let mut area: Vec<u32> = Vec::with_capacity(n_target);
    let mut visible: Vec<u32> = Vec::with_capacity(n_target);

    let mut force_held_out = spec.ood && !spec.held_out.is_empty();
    for _ in 0..n_target {
        // Attributes first (independent of placement).
        let (shape, color) = loop {
            if spec.ood && (force_held_out || rng.random_bool(0.5)) {
                break *spec.held_out.choose(rng).expect("held_out is non-empty in OOD");
            }
            let (s, c) = if !objects.is_empty() && rng.random_bool(k.distractor_prob as f64) {
                // A distractor: same shape as an earlier object, so references need more words.
                let o = objects.choose(rng).expect("non-empty");
                (o.shape, *Color::ALL.choose(rng).expect("non-empty"))
            } else {
                (*Shape::ALL.choose(rng).expect("non-empty"), *Color::ALL.choose(rng).expect("non-empty"))
            };
            let c = if !objects.is_empty() && rng.random_bool(k.similar_color_prob as f64) {
                let o = objects.choose(rng).expect("non-empty");
                *o.color.similar().choose(rng).expect("every color has a similar one")
            } else {
                c
            };
            if spec.ood || !is_held_out(spec.held_out, s, c) {
                break (s, c);
            }
        };
        let size = *Size::ALL.choose(rng).expect("non-empty");
        let texture = *Texture::ALL.choose(rng).expect("non-empty");
        let radius = match size {
            Size::Small => small_r,
            Size::Large => large_r,
        };
        let occlude = !objects.is_empty() && rng.random_bool(k.occlusion_prob as f64);
        let reach = radius * shape.extent();
        let id = objects.len();
        let mut placed = false;
        for _attempt in 0..30 {
            let (x, y) = if occlude {
                // Overlap an earlier object: center at ~0.9 of the summed radii, random direction.
                let o = objects.choose(rng).expect("non-empty");
                let ang = rng.random_range(0.0f32..std::f32::consts::TAU);
                let d = 0.9 * (o.radius + radius);
                (o.x + d * ang.cos(), o.y + d * ang.sin())
            } else {
                (
                    rng.random_range(reach..(spec.width as f32 - reach).max(reach + 1.0)),
                    rng.random_range(reach..(spec.height as f32 - reach).max(reach + 1.0)),
                )
            };
            if x - reach < 0.0 || y - reach < 0.0 || x + reach > spec.width as f32 || y + reach > spec.height as f32 {
                continue;
            }
            let (x, y) = (quantize(x), quantize(y));
            let cand = Object { id, shape, color, size, texture, x, y, radius, visible_fraction: 1.0 };
            if !occlude {
                // Keep apart (a clear gap) unless occlusion is intended.
                let apart = objects.iter().all(|o| {
                    let d = ((o.x - x).powi(2) + (o.y - y).powi(2)).sqrt();
                    d > o.radius * o.shape.extent() + reach + 2.0
                });
                if !apart {
                    continue;
                }
            }
            // Rasterize on a copy; accept only if everyone keeps enough of themselves visible.
            let mut trial = owner.clone();
            let mut trial_visible = visible.clone();
            let mut own = 0u32;
            let (x0, x1, y0, y1) = cand.bbox(spec.width, spec.height);
            for py in y0..y1 {
                for px in x0..x1 {
                    if cand.covers(px, py) {
                        let idx = (py * spec.width + px) as usize;
                        let prev = trial[idx];
                        if prev != u8::MAX {
                            trial_visible[prev as usize] -= 1;
                        }
                        trial[idx] = id as u8;
                        own += 1;
                    }
                }
            }
            if own == 0 {
                continue;
            }
            let ok = trial_visible.iter().zip(&area).all(|(&v, &a)| v as f32 >= spec.min_visible * a as f32);
            if !ok {
                continue;
            }
            owner = trial;
            visible = trial_visible;
            visible.push(own);
            area.push(own);
            objects.push(cand);
            force_held_out = false;
            placed = true;
            break;
        }
        if !placed && objects.len() >= k.min_objects.max(1) {
            // The canvas is full at this level; fewer objects is honest, a forced overlap is not.
            break;
        }
    }
    for (o, (&v, &a)) in objects.iter_mut().zip(visible.iter().zip(&area)) {
        o.visible_fraction = quantize(v as f32 / a as f32);
    }
    objects
}

/// A partial description used to refer to objects: the attributes that are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Desc {
    pub size: Option<Size>,
    pub color: Option<Color>,
    pub texture: Option<Texture>,
    pub shape: Option<Shape>,
}

/// Attributes, for questions that ask about one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    Size,
    Color,
    Texture,
    Shape,
}

impl Attribute {
    pub const ALL: &'static [Attribute] = &[Attribute::Size, Attribute::Color, Attribute::Texture, Attribute::Shape];

    pub fn word(self) -> &'static str {
        match self {
            Attribute::Size => "size",
            Attribute::Color => "color",
            Attribute::Texture => "pattern",
            Attribute::Shape => "shape",
        }
    }

    /// The value of this attribute of `o`, as a word.
    pub fn value_of(self, o: &Object) -> &'static str {
        match self {
            Attribute::Size => o.size.word(),
            Attribute::Color => o.color.word(),
            Attribute::Texture => o.texture.word(),
            Attribute::Shape => o.shape.word(),
        }
    }

    /// All words this attribute can take.
    pub fn values(self) -> Vec<&'static str> {
        match self {
            Attribute::Size => Size::ALL.iter().map(|v| v.word()).collect(),
            Attribute::Color => Color::ALL.iter().map(|v| v.word()).collect(),
            Attribute::Texture => Texture::ALL.iter().map(|v| v.word()).collect(),
            Attribute::Shape => Shape::ALL.iter().map(|v| v.word()).collect(),
        }
    }
}

impl Desc {
    pub fn of(o: &Object, attrs: &[Attribute]) -> Desc {
        let mut d = Desc::default();
        for a in attrs {
            match a {
                Attribute::Size => d.size = Some(o.size),
                Attribute::Color => d.color = Some(o.color),
                Attribute::Texture => d.texture = Some(o.texture),
                Attribute::Shape => d.shape = Some(o.shape),
            }
        }
        d
    }

    pub fn matches(&self, o: &Object) -> bool {
        self.size.is_none_or(|v| v == o.size)
            && self.color.is_none_or(|v| v == o.color)
            && self.texture.is_none_or(|v| v == o.texture)
            && self.shape.is_none_or(|v| v == o.shape)
    }

    fn adjectives(&self) -> Vec<&'static str> {
        let mut w = Vec::new();
        if let Some(s) = self.size {
            w.push(s.word());
        }
        if let Some(c) = self.color {
            w.push(c.word());
        }
        if let Some(t) = self.texture {
            w.push(t.adjective());
        }
        w
    }

    /// "small red circle", "striped object".
    pub fn phrase(&self) -> String {
        let mut w = self.adjectives();
        w.push(self.shape.map_or("object", |s| s.word()));
        w.join(" ")
    }

    /// "small red circles", "striped objects".
    pub fn plural(&self) -> String {
        let mut w: Vec<String> = self.adjectives().into_iter().map(str::to_string).collect();
        w.push(self.shape.map_or("objects".to_string(), |s| s.plural()));
        w.join(" ")
    }
}

/// The shortest description of `objects[target]` that picks it out alone, never naming `exclude`.
/// Shape is preferred as the noun; returns None when no description is unique.
pub fn unique_description(objects: &[Object], target: usize, exclude: Option<Attribute>) -> Option<Desc> {
    use Attribute::*;
    const CANDIDATES: &[&[Attribute]] = &[
        &[Shape],
        &[Color, Shape],
        &[Size, Shape],
        &[Texture, Shape],
        &[Color],
        &[Size, Color, Shape],
        &[Color, Texture, Shape],
        &[Size, Texture, Shape],
        &[Size, Color],
        &[Color, Texture],
        &[Size, Color, Texture, Shape],
        &[Size, Color, Texture],
        &[Size, Texture],
        &[Texture],
        &[Size],
    ];
    let o = &objects[target];
    CANDIDATES
        .iter()
        .filter(|attrs| exclude.is_none_or(|e| !attrs.contains(&e)))
        .map(|attrs| Desc::of(o, attrs))
        .find(|d| objects.iter().filter(|x| d.matches(x)).count() == 1)
}

#[cfg(test)]
mod patch_tests {
    use super::*;

    fn square(id: usize, x: f32, y: f32, radius: f32) -> Object {
        let (shape, color, size, texture) = (Shape::Square, Color::Red, Size::Small, Texture::Solid);
        Object { id, shape, color, size, texture, x, y, radius, visible_fraction: 1.0 }
    }

    #[test]
    fn patches_are_owned_by_the_object_showing_in_most_of_their_pixels() {
        // 8 × 8 image, 4-pixel patches (2 × 2 grid). A square of half-side 0.85 · 4 = 3.4 centred at (4, 4)
        // covers pixel centres 1.5 … 6.5 on both axes: pixels 1–6, i.e. 3 × 3 = 9 of each patch's 16 (≥ 4).
        let mut scene = Scene {
            width: 8,
            height: 8,
            style: Style::Plain,
            level: 0,
            objects: vec![square(0, 4.0, 4.0, 4.0)],
            noise_sigma: 0.0,
            blur_sigma: 0.0,
            contrast: 1.0,
            noise_seed: 0,
        };
        assert_eq!(scene.patch_owners(4).unwrap(), vec![Some(0); 4]);
        // A second square drawn on top in the bottom-right patch (centre (6, 6), half-side 0.85: pixels 5–6,
        // 2 × 2 = 4 of the patch's 16, where object 0 keeps 9 − 4 = 5): object 0 keeps it.
        scene.objects.push(square(1, 6.0, 6.0, 1.0));
        assert_eq!(scene.patch_owners(4).unwrap(), vec![Some(0), Some(0), Some(0), Some(0)]);
        // Half-side 0.85 · 3 = 2.55 at (6, 6): pixels 3–7 (centres 3.5 … 7.5 within 3.45 … 8.55), the whole
        // bottom-right patch: object 1 owns it; it takes 4 pixels of each neighbour, where object 0 keeps more.
        scene.objects[1] = square(1, 6.0, 6.0, 3.0);
        assert_eq!(scene.patch_owners(4).unwrap(), vec![Some(0), Some(0), Some(0), Some(1)]);
        // A lone 2 × 2 square (4 of 16 pixels) owns its patch; nothing else is drawn: background elsewhere.
        scene.objects = vec![square(0, 2.0, 6.0, 1.2)];
        assert_eq!(scene.patch_owners(4).unwrap(), vec![None, None, Some(0), None]);
        assert!(scene.patch_owners(3).unwrap_err().contains("does not split into 3-pixel patches"));
    }
}
