//! Building blocks shared by several pages.

mod footer;
mod header;
mod model_table;

pub use footer::Footer;
pub use header::Header;
pub use model_table::ModelTable;
