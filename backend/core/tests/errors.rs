//! Bad inputs give typed errors with one-line messages, never panics.

mod common;

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{fixture, load};
use unike_core::hooks::Hooks;
use unike_core::model::{Checkpoint, GenerateOptions, VisionLanguageModel};

fn copy_fixture(to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(fixture("tiny-llava"))? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("unike-errors-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn missing_and_broken_checkpoints_are_reported() -> Result<()> {
    let e = Checkpoint::open("/nonexistent/model").unwrap_err().to_string();
    assert!(e.contains("not a directory"), "{e}");

    let d = scratch("badjson");
    copy_fixture(&d)?;
    std::fs::write(d.join("config.json"), "{ not json")?;
    let e = Checkpoint::open(&d).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("not valid JSON"), "{e}");

    let d = scratch("shard");
    copy_fixture(&d)?;
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors"))?;
    let e = Checkpoint::open(&d).unwrap_err().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("missing"), "{e}");

    let d = scratch("tok");
    copy_fixture(&d)?;
    std::fs::remove_file(d.join("tokenizer.json"))?;
    let e = Checkpoint::open(&d)?.processor().unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");

    let d = scratch("shape");
    copy_fixture(&d)?;
    let cfg = std::fs::read_to_string(d.join("config.json"))?
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 97");
    std::fs::write(d.join("config.json"), cfg)?;
    let e = Checkpoint::open(&d)?.load_model(None, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("bad checkpoint") && e.contains("shape"), "{e}");
    Ok(())
}

#[test]
fn wrong_image_counts_and_bad_images_are_reported() -> Result<()> {
    let (_, model, processor) = load("tiny-llava", None)?;
    let e = processor.encode("USER: <image>\nhi ASSISTANT:", 0).unwrap_err().to_string();
    assert!(e.contains("1 <image> placeholder(s) but 0 image(s)"), "{e}");
    let ids = processor.encode("USER: <image>\nhi ASSISTANT:", 1)?;
    let opts = GenerateOptions { max_new_tokens: 2, eos_token_ids: vec![] };
    let e = model.generate(&ids, None, &Hooks::none(), &opts).unwrap_err().to_string();
    assert!(e.contains("25 image tokens but the images give 0"), "{e}");
    let e = model.generate(&[], None, &Hooks::none(), &opts).unwrap_err().to_string();
    assert!(e.contains("empty prompt"), "{e}");
    let big = Tensor::new(&[[1u32, 5000]], &Device::Cpu)?;
    let e = model.forward(&big, None, &Hooks::none()).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");

    let d = scratch("img");
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join("x.png"), b"definitely not a png")?;
    let e = processor.image_processor().load_file(&d.join("x.png"), &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("bad image") && e.contains("x.png"), "{e}");
    let e = processor.image_processor().load_file(&d.join("none.png"), &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("cannot read") && e.contains("none.png"), "{e}");
    Ok(())
}

#[test]
fn truncated_or_garbage_weight_files_are_reported() -> Result<()> {
    let d = scratch("trunc");
    copy_fixture(&d)?;
    let shard = d.join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard)?;
    std::fs::write(&shard, &bytes[..bytes.len() / 2])?;
    let e = Checkpoint::open(&d).unwrap_err().to_string();
    assert!(e.contains("not a safetensors file") && e.contains("do not fit"), "{e}");
    std::fs::write(&shard, b"garbage")?;
    let e = Checkpoint::open(&d).unwrap_err().to_string();
    assert!(e.contains("not a safetensors file"), "{e}");
    Ok(())
}
