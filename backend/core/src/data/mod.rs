//! Edit cases and the MMEdit / VLKEB JSON formats (DESIGN.md "Data formats"). The synthetic world is written in
//! these formats, and the same loader reads real MMEdit (E-VQA, E-IC) and VLKEB files.

pub mod mmedit;
pub mod select;

pub use mmedit::{
    load_cases, read_records, write_records, EditCase, MmeditRecord, PortEntry, PortQa, Portability, Task,
};
pub use select::{dev_len, sample, split_train, OutOfVocabulary, DEV_CASES, DEV_MIN_FILE};
