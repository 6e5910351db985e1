//! The knowledge-space explorer (`/explorer`; paper Fig. 5a): UniKE's in-context knowledge memory of one layer in the
//! raw, semantic and truthfulness spaces side by side, the chosen workspace's UniKE edits highlighted among it, and
//! the entries latent editing retrieves for a chosen question drawn as links. Points are SVG circles with their
//! question and answers as a tooltip; a click (or a search) chooses the question whose retrieval is drawn. The panels
//! stack on a phone.

use leptos::prelude::*;
use unike_shared::explorer::{AnswerKind, ExplorerEntry, ExplorerPoint, ExplorerSpace, ExplorerView};
use unike_shared::routes;

use crate::api;
use crate::session::{SessionCtx, WorkspacePicker};

/// Okabe and Ito's colours: positive, negative; the three hallucination levels; edits.
const POSITIVE: &str = "#0072b2";
const NEGATIVE: &str = "#d55e00";
const LEVELS: [(&str, &str); 3] = [("recognition", "#009e73"), ("vision", "#e69f00"), ("reasoning", "#cc79a7")];
const EDIT: &str = "#000000";
/// Half-width of a picture in the points' units, with a margin.
const HALF: f64 = 1.08;
/// Matches the search lists.
const FOUND_MAX: usize = 8;

#[derive(Clone, Copy, PartialEq)]
enum Colouring {
    Answer,
    Level,
}

fn level_colour(level: &str) -> &'static str {
    LEVELS.iter().find(|(l, _)| *l == level).map(|(_, c)| *c).unwrap_or(EDIT)
}

fn tooltip(e: &ExplorerEntry, kind: AnswerKind) -> String {
    let state = match (kind, e.level.as_str()) {
        (AnswerKind::Positive, "edit") => "the edit (question + target)",
        (AnswerKind::Positive, _) => "h_pos (truthful answer)",
        (AnswerKind::Negative, _) => "h_neg (hallucinated answer)",
    };
    format!(
        "{}\nimage: {} · {}\ntruthful: {}\nhallucinated: {}\n{}{}",
        e.question,
        e.image,
        e.level,
        e.positive,
        e.negative,
        state,
        if e.sampled { "" } else { " · placed (retrieved, outside the sample)" }
    )
}

/// One space's picture.
fn panel(v: &ExplorerView, space: &ExplorerSpace, colouring: Colouring, focus: RwSignal<Option<String>>) -> AnyView {
    let entries = &v.entries;
    let is_edit = |p: &ExplorerPoint| entries[p.entry as usize].level == "edit";
    let positive_of = |entry: u32| space.points.iter().find(|p| p.entry == entry && p.kind == AnswerKind::Positive);
    // Links first (under the points): from the focus's positive state to each retrieved entry's.
    let links = v.focus.as_ref().and_then(|f| positive_of(f.entry).map(|from| (f, *from))).map(|(f, from)| {
        f.links
            .iter()
            .filter_map(|l| positive_of(l.entry).map(|to| (l.score, *to)))
            .map(|(score, to)| {
                view! {
                    <line class="link" x1=from.x y1=-from.y x2=to.x y2=-to.y>
                        <title>{format!("retrieved, cosine {score:.3}")}</title>
                    </line>
                }
            })
            .collect_view()
    });
    let dot = move |p: ExplorerPoint, e: &ExplorerEntry, edit: bool| {
        let fill = match (colouring, p.kind, edit) {
            (_, _, true) => EDIT,
            (Colouring::Answer, AnswerKind::Positive, _) => POSITIVE,
            (Colouring::Answer, AnswerKind::Negative, _) => NEGATIVE,
            (Colouring::Level, _, _) => level_colour(&e.level),
        };
        // Under "level" the answer kind shows as the shape's filling: negatives hollow.
        let hollow = colouring == Colouring::Level && p.kind == AnswerKind::Negative;
        let kind = if p.kind == AnswerKind::Positive { "pos" } else { "neg" };
        let class = format!("pt {kind}{}{}", if edit { " edit" } else { "" }, if e.sampled { "" } else { " placed" });
        let id = e.id.clone();
        view! {
            <circle class=class cx=p.x cy=-p.y r=if edit { 0.045 } else { 0.018 }
                fill=if hollow { "none" } else { fill } stroke=if hollow || edit { fill } else { "none" }
                stroke-width=if edit { 0.012 } else { 0.008 } data-entry=id.clone()
                on:click=move |_| focus.set(Some(id.clone()))>
                <title>{tooltip(e, p.kind)}</title>
            </circle>
        }
    };
    // Memory points by entry (each entry's two states in turn, so neither kind hides the other), the edits on top.
    let mut order: Vec<&ExplorerPoint> = space.points.iter().filter(|p| !is_edit(p)).collect();
    order.sort_by_key(|p| (p.entry, p.kind == AnswerKind::Negative));
    let memory = order.into_iter().map(|p| dot(*p, &entries[p.entry as usize], false)).collect_view();
    let edits =
        space.points.iter().filter(|p| is_edit(p)).map(|p| dot(*p, &entries[p.entry as usize], true)).collect_view();
    let ring = v.focus.as_ref().and_then(|f| positive_of(f.entry)).map(|p| {
        view! { <circle class="focus-ring" cx=p.x cy=-p.y r=0.07 fill="none" stroke="#000" stroke-width=0.014></circle> }
    });
    let vb = format!("{} {} {} {}", -HALF, -HALF, 2.0 * HALF, 2.0 * HALF);
    let apart = format!("answers apart: {:.2} (0.5 mixed, 1 apart)", space.kind_agreement);
    view! {
        <figure class="space-panel" data-space=space.space.clone()>
            <figcaption>{space.title.clone()}<br/><span class="apart">{apart}</span></figcaption>
            <svg viewBox=vb role="img" aria-label=space.title.clone() preserveAspectRatio="xMidYMid meet">
                <rect x=-HALF y=-HALF width=2.0 * HALF height=2.0 * HALF class="frame"></rect>
                <g class="links">{links}</g>
                <g class="points">{memory}</g>
                <g class="edits">{edits}</g>
                {ring}
            </svg>
        </figure>
    }
    .into_any()
}

fn legend(colouring: Colouring, edits: bool) -> AnyView {
    let swatch = |colour: &'static str, hollow: bool, label: &'static str| {
        view! {
            <li><svg viewBox="-1 -1 2 2" class="swatch"><circle r=0.7 fill=if hollow { "none" } else { colour } stroke=colour stroke-width=0.3></circle></svg>{label}</li>
        }
    };
    let items = match colouring {
        Colouring::Answer => view! {
            {swatch(POSITIVE, false, "h_pos: question + truthful answer")}
            {swatch(NEGATIVE, false, "h_neg: question + hallucinated answer")}
        }
        .into_any(),
        Colouring::Level => view! {
            {swatch(LEVELS[0].1, false, "recognition (filled: h_pos, hollow: h_neg)")}
            {swatch(LEVELS[1].1, false, "vision extraction")}
            {swatch(LEVELS[2].1, false, "reasoning")}
        }
        .into_any(),
    };
    view! {
        <ul class="explorer-legend" aria-label="Legend">
            {items}
            {edits.then(|| swatch(EDIT, false, "your workspace's UniKE edits"))}
        </ul>
    }
    .into_any()
}

#[component]
pub fn Explorer() -> impl IntoView {
    let ctx = SessionCtx::get();
    let layer = RwSignal::new(None::<usize>);
    let projection = RwSignal::new("tsne".to_string());
    let colouring = RwSignal::new(Colouring::Answer);
    let with_edits = RwSignal::new(true);
    let focus = RwSignal::new(None::<String>);
    let search = RwSignal::new(String::new());
    let data = LocalResource::new(move || {
        let mut q = vec![format!("projection={}", projection.get())];
        if let Some(l) = layer.get() {
            q.push(format!("layer={l}"));
        }
        if with_edits.get() && ctx.signed_in() {
            if let Some(ws) = ctx.workspace.get() {
                q.push(format!("workspace={ws}"));
            }
        }
        if let Some(f) = focus.get() {
            q.push(format!("focus={}", js_sys::encode_uri_component(&f)));
        }
        let path = format!("{}?{}", routes::EXPLORER, q.join("&"));
        async move { api::get_json::<ExplorerView>(&path).await.map_err(|e| e.to_string()) }
    });
    // The last view stays on screen while the next one loads (a click must not blank the page).
    let shown = RwSignal::new(None::<ExplorerView>);
    Effect::new(move |_| {
        if let Some(Ok(v)) = data.get() {
            shown.set(Some(v));
        }
    });
    let error = move || data.get().and_then(|r| r.err());

    let controls = move || {
        let layers = shown.with(|v| v.as_ref().map(|v| (v.layers.clone(), v.layer))).unwrap_or_default();
        view! {
            <div class="explorer-controls">
                <label class="field inline">"Layer "
                    <select id="explorer-layer" on:change=move |ev| { focus.set(None); layer.set(event_target_value(&ev).parse().ok()) }>
                        {layers.0.iter().map(|l| view! { <option value=l.to_string() selected=*l == layers.1>{l.to_string()}</option> }).collect_view()}
                    </select>
                </label>
                <label class="field inline">"Projection "
                    <select id="explorer-projection" on:change=move |ev| projection.set(event_target_value(&ev))>
                        <option value="tsne" selected=move || projection.get() == "tsne">"t-SNE (as the paper)"</option>
                        <option value="pca" selected=move || projection.get() == "pca">"PCA"</option>
                    </select>
                </label>
                <label class="field inline">"Colour by "
                    <select id="explorer-colour" on:change=move |ev| colouring.set(if event_target_value(&ev) == "level" { Colouring::Level } else { Colouring::Answer })>
                        <option value="answer">"answer (truthful / hallucinated)"</option>
                        <option value="level">"hallucination level"</option>
                    </select>
                </label>
                {move || ctx.signed_in().then(|| view! {
                    <label class="field inline"><input type="checkbox" id="explorer-edits" prop:checked=move || with_edits.get()
                        on:change=move |ev| with_edits.set(event_target_checked(&ev))/>" show the workspace's edits"</label>
                    <WorkspacePicker/>
                })}
            </div>
        }
    };

    let found = move || {
        let needle = search.get().trim().to_lowercase();
        if needle.len() < 2 {
            return Vec::new();
        }
        shown.with(|v| {
            v.as_ref()
                .map(|v| {
                    v.entries
                        .iter()
                        .filter(|e| {
                            e.question.to_lowercase().contains(&needle) || e.positive.to_lowercase().contains(&needle)
                        })
                        .take(FOUND_MAX)
                        .map(|e| (e.id.clone(), format!("{} → {} ({})", e.question, e.positive, e.level)))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
    };

    let focus_card = move || {
        shown.with(|v| {
            let v = v.as_ref()?;
            let f = v.focus.as_ref()?;
            let e = &v.entries[f.entry as usize];
            let rows = f
                .links
                .iter()
                .map(|l| {
                    let r = &v.entries[l.entry as usize];
                    let id = r.id.clone();
                    view! {
                        <tr>
                            <td>{format!("{:.3}", l.score)}</td>
                            <td><button type="button" class="link-button" on:click=move |_| focus.set(Some(id.clone()))>{r.question.clone()}</button></td>
                            <td>{r.positive.clone()}</td>
                            <td>{if r.level == "edit" { "edit".to_string() } else { format!("{} · {}", r.level, r.image) }}</td>
                        </tr>
                    }
                })
                .collect_view();
            Some(view! {
                <section class="card" id="explorer-focus">
                    <h2>"Retrieved for: " {e.question.clone()}</h2>
                    <p>{format!("image {} · truthful {} · hallucinated {} — the {} entries latent in-context editing retrieves for it at layer {} (cosine of the centred question states, over the memory and the workspace's edits; links in the pictures; the entry itself left out).",
                        e.image, e.positive, e.negative, f.links.len(), v.layer)}</p>
                    <div class="table-scroll"><table class="results">
                        <thead><tr><th>"cosine"</th><th>"question"</th><th>"truthful answer"</th><th>"kind"</th></tr></thead>
                        <tbody>{rows}</tbody>
                    </table></div>
                    <button type="button" class="button secondary" on:click=move |_| focus.set(None)>"Clear"</button>
                </section>
            })
        })
    };

    let pictures = move || {
        shown.with(|v| {
            let Some(v) = v.as_ref() else {
                return view! { <p class="status" role="status">"Projecting the memory… (the first time takes a few seconds)"</p> }.into_any();
            };
            let c = colouring.get();
            let edits = v.entries.iter().filter(|e| e.level == "edit").count();
            let facts = format!(
                "Model {} · layer {} · {} · {} of {} triplets sampled (up to 200 per hallucination level), two states each{} · projected in {:.1} s.",
                v.model, v.layer, if v.projection == "tsne" { "t-SNE" } else { "PCA" }, v.sampled, v.memory_size,
                if edits > 0 { format!(" · {edits} edit(s) of the workspace") } else { String::new() }, v.fit_seconds
            );
            let missing = (!v.edits_without_states.is_empty()).then(|| view! {
                <p class="hint">{format!("{} edit(s) of the workspace have no knowledge state here (not UniKE with latent knowledge).", v.edits_without_states.len())}</p>
            });
            view! {
                <p class="hint" id="explorer-facts">{facts}</p>
                {missing}
                <div class="explorer-body">
                    <div class="explorer-grid">
                        {v.spaces.iter().map(|s| panel(v, s, c, focus)).collect_view()}
                    </div>
                    {legend(c, edits > 0)}
                </div>
            }
            .into_any()
        })
    };

    view! {
        <h1>"Knowledge-space explorer"</h1>
        <p class="lead">"UniKE's in-context knowledge, as the paper's Fig. 5a: each question the model got wrong, with the hidden state of its truthful answer and of its own hallucinated one, in the raw hidden states, the semantic space and the truthfulness space. Disentangling should mix the two answers in the semantic space and part them in the truthfulness space. Hover a point for its question; click one to draw what latent editing retrieves for it."</p>
        {controls}
        <label class="field inline">"Find a question "
            <input type="search" id="explorer-search" placeholder="e.g. circles" prop:value=move || search.get()
                on:input=move |ev| search.set(event_target_value(&ev))/>
        </label>
        <ul class="explorer-found">
            {move || found().into_iter().map(|(id, label)| view! {
                <li><button type="button" class="link-button" on:click=move |_| focus.set(Some(id.clone()))>{label}</button></li>
            }).collect_view()}
        </ul>
        {move || error().map(|e| view! {
            <div class="status error" role="alert">
                <p>{format!("The explorer could not be loaded: {e}")}</p>
                <button type="button" class="button secondary" on:click=move |_| data.refetch()>"Try again"</button>
            </div>
        })}
        <div class="explorer-wide">{pictures}</div>
        {focus_card}
    }
}
