//! Typed messages and route paths shared by the UniKE Studio front end (Wasm) and back end (native).
//!
//! This crate holds data only: serde types and route constants. It builds for `wasm32-unknown-unknown` and native.

pub mod ablation;
pub mod auth;
pub mod bench;
pub mod error;
pub mod events;
pub mod explorer;
pub mod model;
pub mod playground;
pub mod routes;
pub mod runs;
pub mod workspace;

pub use bench::{BenchReport, BenchResult, HopScore, MetricConvention, MetricSet, Timing};
pub use error::ApiError;
pub use model::{HealthResponse, ModelInfo};
