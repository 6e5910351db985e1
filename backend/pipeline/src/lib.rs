//! UniKE Studio's experiment pipeline, between the editing core and its front doors.
//!
//! ```text
//! unike-core (model → edit methods → evaluation)
//!     └── unike-pipeline (this crate): load a model, resolve its data, make sure trained artifacts exist, run a
//!         benchmark with progress and cancel, render its tables
//!             ├── unike-server: the studio's API, its job queue and workers
//!             └── unike-cli: the `unike` command (thin: parses flags, calls here, prints)
//! ```
//!
//! - [`load`]: which checkpoint, dtype and device ([`load::ModelArgs`] → [`load::Loaded`]).
//! - [`data`]: where cases and the training split come from (the model's own world, `--world`, `--data`,
//!   `--train`, `--split dev`), and the words a model cannot read.
//! - [`trained`]: KE, MEND and SERAC's networks (trained on demand); [`unike_artifacts`]: UniKE's memory and
//!   encoders (built on demand); [`key_stats`]: ROME's, MEMIT's and AlphaEdit's key statistics (built on demand).
//! - [`bench`]: a benchmark configuration, its cases, and the run itself ([`bench::bench_observed`]);
//!   [`shard`]: the same benchmark cut into shards that other processes compute, assembled bit for bit;
//!   [`report`]: its Markdown tables.
//!
//! Errors are [`Error`]: [`Error::Input`] is the user's to fix (a 4xx from the API, a message from the CLI).

pub mod bench;
pub mod data;
pub mod error;
pub mod key_stats;
pub mod load;
pub mod model_dir;
pub mod progress;
pub mod report;
pub mod shard;
pub mod trained;
pub mod unike_artifacts;

pub use error::{Error, Result};
