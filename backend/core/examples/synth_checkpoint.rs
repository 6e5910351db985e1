//! Writes a random llava-hf checkpoint with the shape of llava-1.5-7b-hf (or fewer text layers), for measuring load
//! time and memory on checkpoints that cannot be downloaded here. The weights are noise; the layout, names, dtype,
//! sharding and config are those of the published checkpoint.
//!
//! ```text
//! cargo run --release -p unike-core --example synth_checkpoint -- OUT_DIR [TEXT_LAYERS=32] [SEED=0]
//! ```
//! The tokenizer and preprocessor come from `tests/fixtures/tiny-llava` (image token id 360).

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

const SHARD_BYTES: usize = 4 << 30;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().context("usage: synth_checkpoint OUT_DIR [TEXT_LAYERS] [SEED]")?);
    let layers: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(32);
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    std::fs::create_dir_all(&out)?;
    let (d, i, v, vd, vi, vl) = (4096usize, 11008usize, 32064usize, 1024usize, 4096usize, 24usize);
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("language_model.model.embed_tokens.weight".into(), vec![v, d]),
        ("language_model.model.norm.weight".into(), vec![d]),
        ("language_model.lm_head.weight".into(), vec![v, d]),
        ("multi_modal_projector.linear_1.weight".into(), vec![d, vd]),
        ("multi_modal_projector.linear_1.bias".into(), vec![d]),
        ("multi_modal_projector.linear_2.weight".into(), vec![d, d]),
        ("multi_modal_projector.linear_2.bias".into(), vec![d]),
    ];
    for l in 0..layers {
        let p = format!("language_model.model.layers.{l}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![d, d]),
            ("self_attn.k_proj.weight", vec![d, d]),
            ("self_attn.v_proj.weight", vec![d, d]),
            ("self_attn.o_proj.weight", vec![d, d]),
            ("mlp.gate_proj.weight", vec![i, d]),
            ("mlp.up_proj.weight", vec![i, d]),
            ("mlp.down_proj.weight", vec![d, i]),
            ("input_layernorm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
        ] {
            tensors.push((format!("{p}.{n}"), s));
        }
    }
    let vp = "vision_tower.vision_model";
    tensors.push((format!("{vp}.embeddings.patch_embedding.weight"), vec![vd, 3, 14, 14]));
    tensors.push((format!("{vp}.embeddings.class_embedding"), vec![vd]));
    tensors.push((format!("{vp}.embeddings.position_embedding.weight"), vec![577, vd]));
    for n in ["pre_layrnorm", "post_layernorm"] {
        tensors.push((format!("{vp}.{n}.weight"), vec![vd]));
        tensors.push((format!("{vp}.{n}.bias"), vec![vd]));
    }
    for l in 0..vl {
        let p = format!("{vp}.encoder.layers.{l}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            tensors.push((format!("{p}.self_attn.{proj}.weight"), vec![vd, vd]));
            tensors.push((format!("{p}.self_attn.{proj}.bias"), vec![vd]));
        }
        for (n, s) in [("mlp.fc1", vec![vi, vd]), ("mlp.fc2", vec![vd, vi])] {
            tensors.push((format!("{p}.{n}.bias"), vec![s[0]]));
            tensors.push((format!("{p}.{n}.weight"), s));
        }
        for n in ["layer_norm1", "layer_norm2"] {
            tensors.push((format!("{p}.{n}.weight"), vec![vd]));
            tensors.push((format!("{p}.{n}.bias"), vec![vd]));
        }
    }
    // Split into shards of at most SHARD_BYTES (f16).
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![vec![]];
    let mut size = 0;
    for t in tensors {
        let bytes = t.1.iter().product::<usize>() * 2;
        if size + bytes > SHARD_BYTES && !shards.last().is_some_and(Vec::is_empty) {
            shards.push(vec![]);
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("one shard").push(t);
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for (k, shard) in shards.iter().enumerate() {
        let fname = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        let mut header = serde_json::Map::new();
        let mut off = 0usize;
        for (name, shape) in shard {
            let bytes = shape.iter().product::<usize>() * 2;
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [off, off + bytes]}),
            );
            off += bytes;
            weight_map.insert(name.clone(), fname.clone());
        }
        let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        let mut w = BufWriter::with_capacity(1 << 22, std::fs::File::create(out.join(&fname))?);
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        for (name, shape) in shard {
            let count = shape.iter().product::<usize>();
            let norm = name.contains("norm") && name.ends_with("weight");
            let mut buf = Vec::with_capacity(count * 2);
            for _ in 0..count {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let x = if norm { 1.0 } else { ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04 };
                buf.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
            }
            w.write_all(&buf)?;
        }
        w.flush()?;
        eprintln!("wrote {fname}");
    }
    std::fs::write(
        out.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&serde_json::json!({"metadata": {}, "weight_map": weight_map}))?,
    )?;
    let config = serde_json::json!({
        "architectures": ["LlavaForConditionalGeneration"], "image_token_index": 360, "model_type": "llava",
        "pad_token_id": 361, "projector_hidden_act": "gelu", "tie_word_embeddings": false, "torch_dtype": "float16",
        "text_config": {"max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                        "num_hidden_layers": layers, "vocab_size": v},
        "vision_config": {"hidden_size": vd, "image_size": 336, "intermediate_size": vi,
                          "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": vl,
                          "patch_size": 14, "projection_dim": 768},
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": v
    });
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llava");
    std::fs::copy(fx.join("tokenizer.json"), out.join("tokenizer.json"))?;
    let pre = serde_json::json!({"crop_size": {"height": 336, "width": 336}, "do_center_crop": true,
        "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}});
    std::fs::write(out.join("preprocessor_config.json"), serde_json::to_string_pretty(&pre)?)?;
    eprintln!("wrote {} ({n} shards, {layers} text layers)", out.display());
    Ok(())
}
