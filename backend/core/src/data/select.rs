//! Which cases a run uses: the seed's deterministic sample, the development slice of a training split, the task of
//! a single MMEdit / VLKEB file, and the words of a data set that fall outside a model's tokenizer.
//!
//! A training file (`vqa_train.json`, `caption_train.json`, or a file given with `--train`) is divided once, by
//! position: its **last [`DEV_CASES`] cases** are the development slice (hyper-parameters are chosen on it), the rest
//! is the **front**, from which the trained editors (KE, MEND, SERAC) and the memory of unrelated inputs take their
//! cases, always from the start. A file of fewer than [`DEV_MIN_FILE`] cases has no development slice. The two
//! parts are disjoint by construction ([`split_train`]); `unike bench --split dev` draws from the slice.

use std::collections::BTreeSet;
use std::path::Path;

use super::mmedit::{EditCase, MmeditRecord, Task};
use crate::error::Result;
use crate::model::ModelProcessor;
use crate::world::rng::Rng;

/// Cases at the end of each training file that form its development slice.
pub const DEV_CASES: usize = 100;
/// The smallest training file with a development slice (smaller files are all front).
pub const DEV_MIN_FILE: usize = 2 * DEV_CASES;

/// How many of a training file's `len` cases are its development slice: [`DEV_CASES`], or 0 below [`DEV_MIN_FILE`].
pub fn dev_len(len: usize) -> usize {
    if len >= DEV_MIN_FILE {
        DEV_CASES
    } else {
        0
    }
}

/// Divides a training file's cases into `(front, dev)`: `dev` is the last [`dev_len`] of them, `front` the rest, in
/// file order. Nothing is in both.
pub fn split_train<T>(mut all: Vec<T>) -> (Vec<T>, Vec<T>) {
    let dev = all.split_off(all.len() - dev_len(all.len()));
    (all, dev)
}

/// `n` of `items` (all of them when there are fewer) drawn without replacement by `seed`: the first `n` positions of
/// a Fisher–Yates shuffle from the front, so the same seed gives the same cases and a larger `n` extends the draw of a
/// smaller one. `label` separates independent draws of one seed (e.g. `vqa` and `caption`).
pub fn sample<T: Clone>(items: &[T], n: usize, seed: u64, label: &str) -> Vec<T> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    let mut rng = Rng::derive(seed, &format!("cases-{label}"), 0);
    let n = n.min(items.len());
    for i in 0..n {
        let j = i + rng.below(items.len() - i);
        order.swap(i, j);
    }
    order[..n].iter().map(|&i| items[i].clone()).collect()
}

/// The task of a single MMEdit / VLKEB file, and why: VLKEB's `port_new` means E-VQA; otherwise prompts that are
/// questions (at least 90% end in `?`) mean E-VQA and prompts that are not (at most 10%) mean E-IC (caption
/// prompts such as "describe the image."); a mixed file is decided by its name (`caption` or `vqa` in it), or not
/// at all (`Err`: the caller asks for `--task`).
pub fn detect_task(records: &[MmeditRecord], path: &Path) -> std::result::Result<(Task, String), String> {
    if records.iter().any(|r| !r.port_new.is_empty()) {
        return Ok((Task::Vqa, "VLKEB portability questions (port_new)".into()));
    }
    if records.is_empty() {
        return Err("it has no records".into());
    }
    let questions = records.iter().filter(|r| r.src.trim_end().ends_with('?')).count();
    let share = questions as f64 / records.len() as f64;
    if share >= 0.9 {
        return Ok((Task::Vqa, format!("{questions} of {} prompts are questions", records.len())));
    }
    if share <= 0.1 {
        return Ok((
            Task::Caption,
            format!("{} of {} prompts are not questions", records.len() - questions, records.len()),
        ));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    match (name.contains("caption"), name.contains("vqa")) {
        (true, false) => Ok((Task::Caption, "its file name".into())),
        (false, true) => Ok((Task::Vqa, "its file name".into())),
        _ => Err(format!("{questions} of {} prompts are questions and its name does not say", records.len())),
    }
}

/// Every text of a case the model reads or is scored on: prompts, answers and probes.
pub fn case_texts(c: &EditCase) -> Vec<&str> {
    let mut out = vec![
        c.prompt.as_str(),
        c.target.as_str(),
        c.rephrase_prompt.as_str(),
        c.loc_question.as_str(),
        c.loc_answer.as_str(),
        c.m_loc_question.as_str(),
        c.m_loc_answer.as_str(),
    ];
    if let Some(p) = &c.pre_edit {
        out.push(p);
    }
    for p in &c.portability {
        out.push(&p.question);
        out.push(&p.answer);
    }
    out
}

/// Words of a data set that a tokenizer maps to its unknown token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutOfVocabulary {
    /// The distinct unknown words, sorted.
    pub words: BTreeSet<String>,
    /// Cases with at least one of them.
    pub cases: usize,
    /// Cases looked at.
    pub of: usize,
}

impl OutOfVocabulary {
    /// Nothing unknown.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// `57 words outside the tokenizer (e.g. "bokari", "tessa", ...; in 812 of 812 cases)`.
    pub fn summary(&self, examples: usize) -> String {
        let shown: Vec<String> = self.words.iter().take(examples).map(|w| format!("{w:?}")).collect();
        let more = if self.words.len() > examples { ", ..." } else { "" };
        format!(
            "{} word{} outside the model's tokenizer (e.g. {}{more}; in {} of {} cases)",
            self.words.len(),
            if self.words.len() == 1 { "" } else { "s" },
            shown.join(", "),
            self.cases,
            self.of
        )
    }
}

/// The words of `cases` (every text of [`case_texts`]) that `processor`'s tokenizer cannot represent. A tokenizer
/// without an unknown token (byte-level BPE) represents everything.
pub fn out_of_vocabulary<'a>(
    processor: &dyn ModelProcessor,
    cases: impl IntoIterator<Item = &'a EditCase>,
) -> Result<OutOfVocabulary> {
    let mut out = OutOfVocabulary::default();
    for c in cases {
        out.of += 1;
        let mut hit = false;
        for text in case_texts(c) {
            let words = processor.unknown_words(text)?;
            hit |= !words.is_empty();
            out.words.extend(words);
        }
        out.cases += usize::from(hit);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_and_front_are_disjoint_and_cover_the_file() {
        for len in [0, 1, 64, 199, 200, 201, 600, 812] {
            let (front, dev) = split_train((0..len).collect::<Vec<usize>>());
            assert_eq!(front.len() + dev.len(), len);
            assert_eq!(dev.len(), if len >= DEV_MIN_FILE { DEV_CASES } else { 0 });
            assert!(front.iter().all(|i| !dev.contains(i)));
            // The slice is the file's end: any prefix of the front (trainers, memory) stays out of it.
            assert!(dev.iter().all(|&i| i >= len - dev.len()));
        }
    }

    #[test]
    fn samples_are_deterministic_distinct_and_nested() {
        let items: Vec<usize> = (0..500).collect();
        let a = sample(&items, 20, 3, "vqa");
        assert_eq!(a, sample(&items, 20, 3, "vqa"));
        assert_ne!(a, sample(&items, 20, 4, "vqa"));
        assert_ne!(a, sample(&items, 20, 3, "caption"));
        assert_eq!(&sample(&items, 40, 3, "vqa")[..20], &a[..]);
        let mut u = a.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 20);
        assert_eq!(sample(&items[..5], 9, 1, "x").len(), 5);
    }

    fn rec(src: &str) -> MmeditRecord {
        let s = String::new;
        MmeditRecord {
            src: src.into(),
            pred: None,
            alt: "x".into(),
            rephrase: s(),
            image: s(),
            image_rephrase: s(),
            loc: s(),
            loc_ans: s(),
            m_loc: s(),
            m_loc_q: s(),
            m_loc_a: s(),
            port_new: vec![],
        }
    }

    #[test]
    fn tasks_are_told_from_the_prompts_or_the_name() {
        let p = Path::new("data.json");
        assert_eq!(detect_task(&[rec("what is this?"), rec("who is it ?")], p).map(|t| t.0), Ok(Task::Vqa));
        assert_eq!(detect_task(&[rec("describe the image."), rec("a photo of")], p).map(|t| t.0), Ok(Task::Caption));
        let mixed = [rec("what is this?"), rec("a photo of")];
        assert!(detect_task(&mixed, p).is_err());
        assert_eq!(detect_task(&mixed, Path::new("caption_eval_edit.json")).map(|t| t.0), Ok(Task::Caption));
        assert!(detect_task(&[], p).is_err());
    }
}
