//! Progress of the pipeline's long steps (training a network, building UniKE's memory) on stderr: a bar on a
//! terminal; where stderr is not one (the studio's server, CI, a log file) the callers print a line now and then.

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::Result;

/// A progress bar of `len` steps on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, prefix: &str) -> Result<ProgressBar> {
    let b = ProgressBar::new(len);
    b.set_style(ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")?);
    b.set_prefix(prefix.to_string());
    Ok(b)
}
