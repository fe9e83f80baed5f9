//! The `demo_mllm` stage's model work: train the benchmark's small LLaVA on its plain reference chains
//! (and, by default, a description of every training scene and short whole-scene drills).
use super::inputs::Features;
use super::{JobError, Result};
use arrow::array::{Array, AsArray};
use mllm::demo::{train, DemoExample, DemoParams};
use mmboundary::data::items_from_record_batch;
use mmboundary::data::penumbra::questions::scene_examples;
use mmboundary::data::penumbra::{extra_questions, PenumbraParams, Scene};
use mmboundary::engine::StageContext;
use mmboundary::stages::demo_mllm::DemoMllmParams;
use mmboundary::stages::generate::question_block;
use mmboundary::store::ArtifactKind;

pub fn run(ctx: &StageContext) -> Result<()> {
    let p: DemoMllmParams = ctx.params()?;
    let mut tp = super::inputs::overlay_params::<DemoParams>(&p.trainer, "demo_mllm.trainer")?;
    let pool_text = std::fs::read_to_string(&p.pool).map_err(JobError::io(&p.pool))?;
    let pool = mmboundary::confidence::statements::StatementPool::from_toml(&pool_text, &p.pool.display().to_string())?;
    tp.extra_vocabulary.extend(pool.level.iter().flat_map(|l| l.statements.iter().cloned()));
    let items_table = ctx.input_table("items")?;
    let items = items_from_record_batch(&items_table.concat()?)?;
    // Extra questions are drawn as the benchmark drew its own: its generator's params, as the items' lineage records them.
    let generator: Option<PenumbraParams> = match p.extra_questions {
        0 => None,
        _ => {
            let lineage = items_table
                .lineage
                .as_ref()
                .ok_or_else(|| JobError::stage("demo_mllm", format!("items {}: no lineage", items_table.id)))?;
            Some(
                serde_json::from_value(lineage.params.clone())
                    .map_err(JobError::step(format!("items {}: the generator's params", items_table.id)))?,
            )
        }
    };
    let feats_batch = ctx.input_table_as("features", &mmboundary::stages::features::features_schema())?.concat()?;
    let feats = Features::from_batch(&feats_batch)?;
    let dims = feats_batch.column_by_name("dim").ok_or_else(|| JobError::column("features artifact", "dim"))?;
    if dims.is_empty() {
        return Err(JobError::stage("demo_mllm", "the features artifact is empty"));
    }
    let vision_hidden = dims.as_primitive::<arrow::datatypes::UInt32Type>().value(0) as usize;

    let (mut examples, mut described) = (Vec::new(), Vec::new());
    for it in items.iter().filter(|i| p.splits.iter().any(|s| s == &i.split)) {
        if p.limit.is_some_and(|n| examples.len() >= n) {
            break;
        }
        let (n, t) = feats.tensor(&it.id)?;
        let patches = Vec::<f32>::try_from(t.reshape([-1]))?;
        let target = it.chain.sentences().collect::<Vec<_>>().join(" ");
        let wanted = p.describe_prompt.is_some() || p.perception_drills || p.object_drills || generator.is_some();
        if let Some(scene) = it.meta.get("scene").filter(|_| wanted) {
            let scene: Scene = serde_json::from_value(scene.clone()).map_err(JobError::step(format!("item {}: meta.scene", it.id)))?;
            for (prompt, target) in scene_examples(&scene, p.describe_prompt.as_deref(), p.perception_drills, p.object_drills) {
                described.push(DemoExample { patches: patches.clone(), n_patches: n as usize, prompt, target });
            }
            if let Some(g) = &generator {
                let index = it.meta.get("generator").and_then(|m| m.get("index")).and_then(|i| i.as_u64()).ok_or_else(|| {
                    JobError::stage("demo_mllm", format!("item {}: meta.generator.index is missing (extra_questions needs it)", it.id))
                })?;
                for q in extra_questions(g, index as usize, &scene, p.extra_questions) {
                    let target = q.perception.iter().chain(&q.reasoning).cloned().collect::<Vec<_>>().join(" ");
                    let prompt = question_block(&q.text, &q.choices);
                    described.push(DemoExample { patches: patches.clone(), n_patches: n as usize, prompt, target });
                }
            }
        } else if generator.is_some() {
            return Err(JobError::stage("demo_mllm", format!("item {}: extra_questions needs a Penumbra scene (meta.scene)", it.id)));
        }
        examples.push(DemoExample { patches, n_patches: n as usize, prompt: question_block(&it.question, &it.choices), target });
    }
    let chains = examples.len();
    examples.extend(described);
    if examples.is_empty() {
        return Err(JobError::stage("demo_mllm", format!("no items in splits {:?} to train the demo MLLM on", p.splits)));
    }
    let out = tempfile::tempdir().map_err(JobError::io(std::env::temp_dir()))?;
    let dir = out.path().join("mllm");
    let bar = ctx.progress(1, "training the demo MLLM");
    let report = train(&examples, vision_hidden, &p.gguf, &dir, &tp)?;
    bar.finish_and_clear();
    let summary = serde_json::json!({
        "examples": examples.len(),
        "chains": chains,
        "scene_examples": examples.len() - chains,
        "steps": report.steps,
        "final_loss": report.final_loss,
        "parameters": report.parameters,
        "bytes": report.bytes,
        "seconds": report.seconds,
        "losses": report.rows.iter().map(|r| r.loss).collect::<Vec<_>>(),
    });
    ctx.write_bytes("report", ArtifactKind::Json, &serde_json::to_vec_pretty(&summary)?)?;
    ctx.write_dir("mllm", &dir)?;
    Ok(())
}
