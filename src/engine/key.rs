use std::collections::BTreeMap;

/// The one definition of a stage's cache key: blake3 over the canonical JSON of everything that can
/// change its outputs. serde_json maps are sorted, so params in any order give the same key.
pub fn cache_key(
    stage: &str,
    code_version: &str,
    params: &serde_json::Value,
    inputs: &BTreeMap<String, String>,
    models: &BTreeMap<String, String>,
    device: &str,
) -> String {
    let doc = serde_json::json!({
        "stage": stage,
        "code_version": code_version,
        "params": params,
        "inputs": inputs,
        "models": models,
        "device": device,
    });
    blake3::hash(doc.to_string().as_bytes()).to_hex().to_string()
}
