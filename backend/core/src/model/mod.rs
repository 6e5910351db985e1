//! The hookable LLaVA-style vision-language model and its checkpoint loading (DESIGN.md `model/`).

pub mod blip2;
pub mod blip2_checkpoint;
pub mod blip2_config;
pub mod blip2_processor;
pub mod blip2_vision;
pub mod cache;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod generate;
pub mod generate_blip2;
pub mod kernels;
pub mod llama;
pub mod llava;
pub mod mmap;
pub mod norm;
pub mod opt;
pub mod preprocess;
pub mod processor;
pub mod qformer;
pub mod route;

pub use blip2::Blip2;
pub use blip2_checkpoint::Blip2Checkpoint;
pub use blip2_config::Blip2Config;
pub use blip2_processor::Blip2Processor;
pub use cache::KvCache;
pub use checkpoint::Checkpoint;
pub use config::LlavaConfig;
pub use generate::{GenerateOptions, Generation};
pub use llava::{KeyLayout, Llava};
pub use preprocess::ImageProcessor;
pub use processor::Processor;
