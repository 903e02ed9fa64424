//! `ace model info` on the tiny fixture model: what is loaded from where, with parameter counts
//! read from the checkpoint headers; and the error when a preset's weights are not there.

use assert_cmd::Command;

const TINY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ace-tiny/model/ace_tiny.yaml"
);

#[test]
fn describes_each_component_of_the_tiny_model() {
    let out = Command::cargo_bin("ace")
        .unwrap()
        .args([
            "--device", "cpu", "model", "info", "--json", "--dtype", "bf16", "--config", TINY,
        ])
        .assert()
        .success();
    let doc: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let components = doc["components"].as_array().unwrap();
    let names: Vec<&str> = components
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dit", "vae", "text_encoder"]);
    for c in components {
        let params = c["parameters"].as_u64().unwrap();
        assert!(params > 0, "{c}");
        let memory = c["memory_bytes"].as_u64().unwrap();
        if c["component"] == "text_encoder" {
            // Streamed a block at a time: one of its two f32 blocks is held, not the whole.
            assert!(memory > 0 && memory < params * 4 / 2, "{c}");
        } else {
            // bf16 on the CPU: two bytes for the linear layers' (DiT) or convolutions' (VAE)
            // weights, which are nearly all of them, four for the rest.
            assert!(
                memory > 2 * params && memory < 2 * params + params / 4,
                "{c}"
            );
        }
        assert!(std::path::Path::new(c["path"].as_str().unwrap()).exists());
    }
    assert_eq!(
        doc["memory_bytes"]["model_phase"].as_u64().unwrap(),
        components[0]["memory_bytes"].as_u64().unwrap()
            + components[1]["memory_bytes"].as_u64().unwrap()
    );
    // The tiny DiT: hidden 64, depth 2 — its parameters counted from the pickle's records.
    let dit = &components[0];
    assert_eq!(dit["stored_dtypes"], serde_json::json!(["f32"]));
    let total: u64 = components
        .iter()
        .map(|c| c["parameters"].as_u64().unwrap())
        .sum();
    assert_eq!(doc["parameters"].as_u64().unwrap(), total);

    let table = Command::cargo_bin("ace")
        .unwrap()
        .args(["model", "info", "--config", TINY])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&table.get_output().stdout).to_string();
    assert!(
        text.contains("ace_tiny.pth") && text.contains("while the prompts are encoded"),
        "{text}"
    );
}

#[test]
fn a_preset_without_its_weights_says_what_is_missing() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("ace")
        .unwrap()
        .args(["model", "info", "--preset", "ace_0.6b_512"])
        .env("HF_HOME", home.path())
        .env_remove("ACE_MODEL_DIR")
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("models/dit/ace_0.6b_512px.pth"), "{err}");
    assert!(err.contains("--model-dir"), "{err}");
}
