//! The hookable LLaVA-style vision-language model and its checkpoint loading (DESIGN.md `model/`).

pub mod cache;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod generate;
pub mod kernels;
pub mod llama;
pub mod llava;
pub mod mmap;
pub mod norm;
pub mod preprocess;
pub mod processor;
pub mod route;

pub use cache::KvCache;
pub use checkpoint::Checkpoint;
pub use config::LlavaConfig;
pub use generate::{GenerateOptions, Generation};
pub use llava::{KeyLayout, Llava};
pub use preprocess::ImageProcessor;
pub use processor::Processor;
