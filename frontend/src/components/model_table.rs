//! A table describing the loaded model.

use leptos::prelude::*;
use unike_shared::ModelInfo;

use crate::format::{grouped, parameter_count};

/// Key facts of a [`ModelInfo`] as a two-column table.
#[component]
pub fn ModelTable(info: ModelInfo) -> impl IntoView {
    let family = match info.family.as_str() {
        "blip2" => "BLIP-2 (OPT)",
        "qwen2vl" => "Qwen2-VL",
        _ => "LLaVA",
    };
    let rows = [
        ("Name", info.name),
        ("Family", family.to_string()),
        ("Source", info.source),
        ("Parameters", format!("{} ({})", parameter_count(info.parameters), grouped(info.parameters))),
        ("Data type", info.dtype),
        ("Device", info.device),
        (
            "Layers",
            format!(
                "{} text (hidden {}), {} vision (hidden {})",
                info.text_layers, info.text_hidden_size, info.vision_layers, info.vision_hidden_size
            ),
        ),
        ("Vocabulary", grouped(info.vocab_size as u64)),
        (
            "Image size",
            match info.image_size {
                0 => "any (dynamic resolution)".to_string(),
                n => format!("{n} × {n} px"),
            },
        ),
        (
            "Image tokens",
            match info.image_seq_length {
                0 => "by the image's size".to_string(),
                n => n.to_string(),
            },
        ),
    ];
    view! {
        <div class="table-scroll">
            <table class="facts">
                <caption>"Loaded model"</caption>
                <tbody>
                    {rows
                        .into_iter()
                        .map(|(label, value)| view! {
                            <tr>
                                <th scope="row">{label}</th>
                                <td>{value}</td>
                            </tr>
                        })
                        .collect_view()}
                </tbody>
            </table>
        </div>
    }
}
