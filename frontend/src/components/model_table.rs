//! A table describing the loaded model.

use leptos::prelude::*;
use unike_shared::ModelInfo;

use crate::format::{grouped, parameter_count};

/// Key facts of a [`ModelInfo`] as a two-column table.
#[component]
pub fn ModelTable(info: ModelInfo) -> impl IntoView {
    let rows = [
        ("Name", info.name),
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
        ("Image size", format!("{0} × {0} px", info.image_size)),
        ("Image tokens", info.image_seq_length.to_string()),
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
