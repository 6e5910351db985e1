//! MMEdit records (`src`, `pred`, `alt`, `rephrase`, `image`, `image_rephrase`, `loc`, `loc_ans`, `m_loc`,
//! `m_loc_q`, `m_loc_a`) with VLKEB's `port_new`, and the [`EditCase`] the engine works on.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One record of an MMEdit / VLKEB JSON file (a JSON array of these). Unknown keys are ignored on read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmeditRecord {
    /// The edit prompt (question, or caption prefix in E-IC).
    pub src: String,
    /// The pre-edit answer, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "string_or_list")]
    pub pred: Option<String>,
    /// The edit target.
    #[serde(deserialize_with = "string_or_first")]
    pub alt: String,
    /// A rephrased prompt (T-Generality).
    pub rephrase: String,
    /// The edit image (path relative to the image root).
    pub image: String,
    /// Another image of the same subject (M-Generality).
    pub image_rephrase: String,
    /// A text-only locality question and its answer (T-Locality).
    pub loc: String,
    pub loc_ans: String,
    /// A multimodal locality image, question and answer (M-Locality).
    pub m_loc: String,
    pub m_loc_q: String,
    pub m_loc_a: String,
    /// VLKEB portability questions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_new: Vec<PortEntry>,
}

/// VLKEB `port_new` entry: `{"port_type": "2-hop", "Q&A": {"Question": ..., "Answer": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortEntry {
    pub port_type: String,
    #[serde(rename = "Q&A")]
    pub qa: PortQa,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortQa {
    #[serde(rename = "Question")]
    pub question: String,
    #[serde(rename = "Answer", deserialize_with = "string_or_first")]
    pub answer: String,
}

fn string_or_first<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        One(String),
        Many(Vec<String>),
    }
    match S::deserialize(d)? {
        S::One(s) => Ok(s),
        S::Many(v) => v.into_iter().next().ok_or_else(|| serde::de::Error::custom("empty answer list")),
    }
}

fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    string_or_first(d).map(Some)
}

/// Which MMEdit task a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// E-VQA.
    Vqa,
    /// E-IC.
    Caption,
}

/// A portability probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Portability {
    /// `1-hop`, `2-hop`, ...
    pub hop: String,
    pub question: String,
    pub answer: String,
}

/// An edit case with resolved image paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditCase {
    pub task: Task,
    pub prompt: String,
    pub target: String,
    pub pre_edit: Option<String>,
    pub image: PathBuf,
    pub rephrase_prompt: String,
    pub rephrase_image: PathBuf,
    pub loc_question: String,
    pub loc_answer: String,
    pub m_loc_image: PathBuf,
    pub m_loc_question: String,
    pub m_loc_answer: String,
    pub portability: Vec<Portability>,
}

impl EditCase {
    /// The case of `record`, with image paths joined to `image_root`.
    pub fn from_record(r: &MmeditRecord, task: Task, image_root: &Path) -> Self {
        Self {
            task,
            prompt: r.src.clone(),
            target: r.alt.clone(),
            pre_edit: r.pred.clone(),
            image: image_root.join(&r.image),
            rephrase_prompt: r.rephrase.clone(),
            rephrase_image: image_root.join(&r.image_rephrase),
            loc_question: r.loc.clone(),
            loc_answer: r.loc_ans.clone(),
            m_loc_image: image_root.join(&r.m_loc),
            m_loc_question: r.m_loc_q.clone(),
            m_loc_answer: r.m_loc_a.clone(),
            portability: r
                .port_new
                .iter()
                .map(|p| Portability {
                    hop: p.port_type.clone(),
                    question: p.qa.question.clone(),
                    answer: p.qa.answer.clone(),
                })
                .collect(),
        }
    }
}

/// Reads a JSON array of records; a malformed file or record is reported with its path and index.
pub fn read_records(path: &Path) -> Result<Vec<MmeditRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let values: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| Error::Data { path: path.to_path_buf(), msg: format!("not a JSON array of records: {e}") })?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let r: MmeditRecord = serde_json::from_value(v)
                .map_err(|e| Error::Data { path: path.to_path_buf(), msg: format!("record {i}: {e}") })?;
            if r.alt.trim().is_empty() {
                return Err(Error::Data { path: path.to_path_buf(), msg: format!("record {i}: empty target (alt)") });
            }
            Ok(r)
        })
        .collect()
}

/// Writes records as a pretty JSON array.
pub fn write_records(path: &Path, records: &[MmeditRecord]) -> Result<()> {
    let text = serde_json::to_string_pretty(records).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Loads edit cases from an MMEdit / VLKEB file; images resolve against `image_root` (default: the file's folder).
pub fn load_cases(path: &Path, task: Task, image_root: Option<&Path>) -> Result<Vec<EditCase>> {
    let records = read_records(path)?;
    let root =
        image_root.map(Path::to_path_buf).unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    Ok(records.iter().map(|r| EditCase::from_record(r, task, &root)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mmedit_and_vlkeb_shapes() {
        // An E-VQA record as MMEdit ships it (pred as a list, extra keys), and a VLKEB record with port_new.
        let json = r#"[
          {"src": "What is the main color of this bus?", "pred": ["white"], "rephrase": "What colour is the bus?",
           "alt": "red", "image": "val2014/a.jpg", "image_rephrase": "val2014/b.jpg", "loc": "nq question: who wrote it",
           "loc_ans": "tolkien", "m_loc": "train2014/c.jpg", "m_loc_q": "what is on the table?", "m_loc_a": "a cake",
           "textual_rephrase": "ignored"},
          {"src": "Who is this?", "rephrase": "Who is pictured?", "alt": "Ada", "image": "x.png",
           "image_rephrase": "y.png", "loc": "q", "loc_ans": "a", "m_loc": "z.png", "m_loc_q": "mq", "m_loc_a": "ma",
           "port_new": [{"port_type": "2-hop", "Q&A": {"Question": "Where was she born?", "Answer": "London"}}]}
        ]"#;
        let dir = std::env::temp_dir().join(format!("unike-mmedit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("e.json");
        std::fs::write(&p, json).unwrap();
        let cases = load_cases(&p, Task::Vqa, None).unwrap();
        assert_eq!(cases[0].pre_edit.as_deref(), Some("white"));
        assert_eq!(cases[0].image, dir.join("val2014/a.jpg"));
        assert_eq!(cases[1].portability[0].answer, "London");
        // Round trip through the writer.
        let recs = read_records(&p).unwrap();
        write_records(&dir.join("out.json"), &recs).unwrap();
        assert_eq!(read_records(&dir.join("out.json")).unwrap(), recs);
        // Malformed input names the record.
        std::fs::write(&p, r#"[{"src": "q"}]"#).unwrap();
        let e = read_records(&p).unwrap_err().to_string();
        assert!(e.contains("record 0") && e.contains("missing field"), "{e}");
        std::fs::write(&p, "{}").unwrap();
        assert!(read_records(&p).unwrap_err().to_string().contains("not a JSON array"));
    }
}
