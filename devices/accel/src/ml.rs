//! The ML accelerator's model: an int8 multi-layer perceptron over 28×28 grey images
//! (784 → 32 → 10), its weights shipped in `models/mlp-784-32-10.bin`, plus the
//! synthetic image set it classifies.
//!
//! Arithmetic (both implementations, bit for bit):
//! - input `x[i] = pixel[i] − 128` (i8 range);
//! - hidden `h[j] = clamp((b1[j] + Σ_i w1[j][i]·x[i]) >> shift, 0, 127)` (arithmetic
//!   shift, i32 accumulators);
//! - logits `y[k] = b2[k] + Σ_j w2[k][j]·h[j]` (i32); class = the first index of the
//!   largest logit.
//!
//! [`reference`] is the textbook loop nest, kept simple on purpose; [`Engine`] is the
//! device's implementation (transposed, weight-stationary loops, the order a systolic
//! array would use). Tests compare the two on many images.
//!
//! Weights file (little endian): magic `MLP1`, u32 inputs, hidden, outputs, shift; then
//! w1 (hidden × inputs i8, row-major), b1 (hidden i32), w2 (outputs × hidden i8), b2
//! (outputs i32). The shipped file is [`synthesize`]'s output (a test checks it): each
//! hidden unit is a template of one class's stripe, with deterministic jitter.

/// Image side.
pub const SIDE: usize = 28;
/// Input bytes (one grey byte per pixel).
pub const INPUTS: usize = SIDE * SIDE;
/// Hidden units.
pub const HIDDEN: usize = 32;
/// Classes.
pub const CLASSES: usize = 10;
/// Model ID of the shipped model (what descriptors and stream registers name).
pub const MODEL_ID: u32 = 1;
/// Bytes of an inference result payload: u8 class, 3 zero bytes, 10 × i32 logits.
pub const RESULT_BYTES: usize = 4 + 4 * CLASSES;

/// The shipped weights.
pub const SHIPPED: &[u8] = include_bytes!("../models/mlp-784-32-10.bin");

/// A loaded model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// Right shift applied to hidden accumulators.
    pub shift: u32,
    /// Hidden weights, `w1[j * INPUTS + i]`.
    pub w1: Vec<i8>,
    /// Hidden biases.
    pub b1: Vec<i32>,
    /// Output weights, `w2[k * HIDDEN + j]`.
    pub w2: Vec<i8>,
    /// Output biases.
    pub b2: Vec<i32>,
}

/// Why a weights file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// Not a weights file of this format.
    #[error("not an MLP1 weights file")]
    BadMagic,
    /// Dimensions other than 784 → 32 → 10.
    #[error("the model is {0} → {1} → {2}, the device runs 784 → 32 → 10")]
    BadShape(u32, u32, u32),
    /// The file is shorter or longer than its dimensions say.
    #[error("weights file has {got} bytes, its dimensions need {want}")]
    BadLength { got: usize, want: usize },
}

/// An inference result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inference {
    /// The predicted class.
    pub class: u8,
    /// The logits.
    pub logits: [i32; CLASSES],
}

impl Inference {
    /// The result payload (see [`RESULT_BYTES`]).
    pub fn to_bytes(&self) -> [u8; RESULT_BYTES] {
        let mut b = [0u8; RESULT_BYTES];
        b[0] = self.class;
        for (k, l) in self.logits.iter().enumerate() {
            b[4 + 4 * k..8 + 4 * k].copy_from_slice(&l.to_le_bytes());
        }
        b
    }

    /// Parses a result payload.
    pub fn from_bytes(b: &[u8]) -> Option<Inference> {
        if b.len() != RESULT_BYTES || b[1..4] != [0, 0, 0] {
            return None;
        }
        let mut logits = [0i32; CLASSES];
        for (k, l) in logits.iter_mut().enumerate() {
            *l = i32::from_le_bytes(b[4 + 4 * k..8 + 4 * k].try_into().ok()?);
        }
        Some(Inference { class: b[0], logits })
    }
}

fn argmax(logits: &[i32; CLASSES]) -> u8 {
    let mut best = 0;
    for k in 1..CLASSES {
        if logits[k] > logits[best] {
            best = k;
        }
    }
    best as u8
}

impl Model {
    /// The shipped model.
    pub fn shipped() -> Model {
        Model::parse(SHIPPED).expect("the shipped weights file is valid (tested)")
    }

    /// Parses a weights file.
    pub fn parse(b: &[u8]) -> Result<Model, ModelError> {
        if b.get(..4) != Some(b"MLP1") {
            return Err(ModelError::BadMagic);
        }
        let u32_at = |o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
        let (Some(i), Some(h), Some(o), Some(shift)) = (u32_at(4), u32_at(8), u32_at(12), u32_at(16)) else {
            return Err(ModelError::BadLength { got: b.len(), want: 20 });
        };
        if (i as usize, h as usize, o as usize) != (INPUTS, HIDDEN, CLASSES) || shift > 31 {
            return Err(ModelError::BadShape(i, h, o));
        }
        let want = 20 + HIDDEN * INPUTS + 4 * HIDDEN + CLASSES * HIDDEN + 4 * CLASSES;
        if b.len() != want {
            return Err(ModelError::BadLength { got: b.len(), want });
        }
        let mut at = 20;
        let mut i8s = |n: usize| {
            let v: Vec<i8> = b[at..at + n].iter().map(|&x| x as i8).collect();
            at += n;
            v
        };
        let w1 = i8s(HIDDEN * INPUTS);
        let b1_at = 20 + HIDDEN * INPUTS;
        let i32s = |from: usize, n: usize| -> Vec<i32> {
            (0..n)
                .map(|k| i32::from_le_bytes(b[from + 4 * k..from + 4 * k + 4].try_into().unwrap_or_default()))
                .collect()
        };
        let b1 = i32s(b1_at, HIDDEN);
        let w2_at = b1_at + 4 * HIDDEN;
        let w2: Vec<i8> = b[w2_at..w2_at + CLASSES * HIDDEN].iter().map(|&x| x as i8).collect();
        let b2 = i32s(w2_at + CLASSES * HIDDEN, CLASSES);
        Ok(Model { shift, w1, b1, w2, b2 })
    }

    /// The weights file of this model.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = b"MLP1".to_vec();
        for v in [INPUTS as u32, HIDDEN as u32, CLASSES as u32, self.shift] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend(self.w1.iter().map(|&x| x as u8));
        b.extend(self.b1.iter().flat_map(|v| v.to_le_bytes()));
        b.extend(self.w2.iter().map(|&x| x as u8));
        b.extend(self.b2.iter().flat_map(|v| v.to_le_bytes()));
        b
    }
}

/// A deterministic pseudo-random stream (splitmix64).
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The rows of class `c`'s stripe.
fn stripe(c: usize) -> std::ops::Range<usize> {
    let top = 2 + 2 * c + c / 2;
    top..top + 4
}

/// Builds the shipped model: hidden unit `j` matches the stripe of class `j % 10`
/// (+3 on its rows, 0 elsewhere, jitter in −1..=1), output `k` sums the units of class
/// `k` and is pushed down by the others.
pub fn synthesize() -> Model {
    let mut rng = SplitMix(0x6e61_6761_7265_2d31);
    let mut w1 = vec![0i8; HIDDEN * INPUTS];
    for j in 0..HIDDEN {
        let rows = stripe(j % CLASSES);
        for i in 0..INPUTS {
            let jitter = rng.below(3) as i8 - 1;
            let base = if rows.contains(&(i / SIDE)) { 3 } else { 0 };
            w1[j * INPUTS + i] = base + jitter;
        }
    }
    let b1 = (0..HIDDEN).map(|_| -2000 - rng.below(500) as i32).collect();
    let mut w2 = vec![0i8; CLASSES * HIDDEN];
    for k in 0..CLASSES {
        for j in 0..HIDDEN {
            w2[k * HIDDEN + j] = if j % CLASSES == k { 20 } else { -2 } + rng.below(3) as i8 - 1;
        }
    }
    let b2 = (0..CLASSES).map(|_| rng.below(64) as i32 - 32).collect();
    Model { shift: 8, w1, b1, w2, b2 }
}

/// The synthetic image of item `seq`: its label (`seq`'s class) and pixels, a bright
/// horizontal stripe at the label's rows over deterministic noise.
pub fn synthetic_image(seq: u32) -> (u8, Vec<u8>) {
    let mut rng = SplitMix(0x696d_6167_6500_0000 ^ seq as u64);
    let label = (rng.next_u64() % CLASSES as u64) as usize;
    let rows = stripe(label);
    let img = (0..INPUTS)
        .map(|i| if rows.contains(&(i / SIDE)) { 180 + rng.below(60) as u8 } else { rng.below(70) as u8 })
        .collect();
    (label as u8, img)
}

/// The reference implementation: the definition, loop by loop.
pub mod reference {
    use super::*;

    /// Classifies `image` (784 grey bytes) with `m`.
    pub fn infer(m: &Model, image: &[u8]) -> Inference {
        assert_eq!(image.len(), INPUTS, "an image is {INPUTS} bytes");
        let mut hidden = [0i32; HIDDEN];
        for (j, h) in hidden.iter_mut().enumerate() {
            let mut acc: i32 = m.b1[j];
            for (i, &p) in image.iter().enumerate() {
                acc += m.w1[j * INPUTS + i] as i32 * (p as i32 - 128);
            }
            *h = (acc >> m.shift).clamp(0, 127);
        }
        let mut logits = [0i32; CLASSES];
        for (k, l) in logits.iter_mut().enumerate() {
            let mut acc = m.b2[k];
            for (j, &h) in hidden.iter().enumerate() {
                acc += m.w2[k * HIDDEN + j] as i32 * h;
            }
            *l = acc;
        }
        Inference { class: argmax(&logits), logits }
    }
}

/// The device's inference engine: weights transposed once at load, then a
/// weight-stationary pass over the input (each input pixel feeds every hidden unit).
#[derive(Clone, Debug)]
pub struct Engine {
    shift: u32,
    /// `w1t[i * HIDDEN + j]`.
    w1t: Vec<i16>,
    b1: [i32; HIDDEN],
    /// `w2t[j * CLASSES + k]`.
    w2t: Vec<i32>,
    b2: [i32; CLASSES],
}

impl Engine {
    /// Loads `m`.
    pub fn new(m: &Model) -> Engine {
        let mut w1t = vec![0i16; INPUTS * HIDDEN];
        for j in 0..HIDDEN {
            for i in 0..INPUTS {
                w1t[i * HIDDEN + j] = m.w1[j * INPUTS + i] as i16;
            }
        }
        let mut w2t = vec![0i32; HIDDEN * CLASSES];
        for k in 0..CLASSES {
            for j in 0..HIDDEN {
                w2t[j * CLASSES + k] = m.w2[k * HIDDEN + j] as i32;
            }
        }
        Engine {
            shift: m.shift,
            w1t,
            b1: m.b1.clone().try_into().unwrap_or([0; HIDDEN]),
            w2t,
            b2: m.b2.clone().try_into().unwrap_or([0; CLASSES]),
        }
    }

    /// Classifies `image`; None when it is not [`INPUTS`] bytes.
    pub fn infer(&self, image: &[u8]) -> Option<Inference> {
        if image.len() != INPUTS {
            return None;
        }
        let mut acc = self.b1;
        for (i, &p) in image.iter().enumerate() {
            let x = p as i32 - 128;
            let row = &self.w1t[i * HIDDEN..(i + 1) * HIDDEN];
            for (a, &w) in acc.iter_mut().zip(row) {
                *a += w as i32 * x;
            }
        }
        let mut logits = self.b2;
        for (j, &a) in acc.iter().enumerate() {
            let h = (a >> self.shift).clamp(0, 127);
            if h == 0 {
                continue;
            }
            for (l, &w) in logits.iter_mut().zip(&self.w2t[j * CLASSES..(j + 1) * CLASSES]) {
                *l += w * h;
            }
        }
        Some(Inference { class: argmax(&logits), logits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_weights_are_the_synthesized_model() {
        let m = synthesize();
        if std::env::var_os("REGENERATE_MODEL").is_some() {
            std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/models/mlp-784-32-10.bin"), m.to_bytes())
                .unwrap();
        }
        assert_eq!(Model::parse(SHIPPED).unwrap(), m, "regenerate with REGENERATE_MODEL=1");
        assert_eq!(Model::parse(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn engine_matches_reference_bit_for_bit() {
        let m = Model::shipped();
        let e = Engine::new(&m);
        let mut correct = 0;
        for seq in 0..2000 {
            let (label, img) = synthetic_image(seq);
            let want = reference::infer(&m, &img);
            assert_eq!(e.infer(&img), Some(want), "image {seq}");
            correct += (want.class == label) as u32;
        }
        // The model is a classifier of the synthetic set, not noise.
        assert!(correct > 1900, "{correct}/2000 classified right");
        // Arbitrary bytes too (extremes saturate the hidden layer).
        let mut rng = SplitMix(5);
        for _ in 0..200 {
            let img: Vec<u8> = (0..INPUTS).map(|_| rng.next_u64() as u8).collect();
            assert_eq!(e.infer(&img), Some(reference::infer(&m, &img)));
        }
        assert_eq!(e.infer(&[255; INPUTS]), Some(reference::infer(&m, &[255; INPUTS])));
        assert_eq!(e.infer(&[0; INPUTS]), Some(reference::infer(&m, &[0; INPUTS])));
        assert_eq!(e.infer(&[0; 10]), None);
    }

    #[test]
    fn results_and_weights_files_are_checked() {
        let r = Inference { class: 3, logits: [-5, 1, 2, 99, 0, 0, 0, 0, 0, i32::MIN] };
        assert_eq!(Inference::from_bytes(&r.to_bytes()), Some(r));
        assert_eq!(Inference::from_bytes(&[0; 3]), None);
        assert_eq!(Model::parse(b"NOPE"), Err(ModelError::BadMagic));
        let mut b = synthesize().to_bytes();
        b.pop();
        assert!(matches!(Model::parse(&b), Err(ModelError::BadLength { .. })));
        b[4] = 9;
        assert!(matches!(Model::parse(&b), Err(ModelError::BadShape(..))));
    }
}
