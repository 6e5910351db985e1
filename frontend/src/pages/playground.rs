//! The Playground: pick an image (the world's gallery or an upload), ask, edit, see the post-edit answer and the
//! probes, manage the workspace's edit stack (undo any edit), and move cases in and out as MMEdit JSON.

use leptos::prelude::*;
use unike_shared::playground::{
    AnswerRequest, AnswerResponse, AppliedEdit, CaseImport, EditRequest, EditStack, GalleryItem, ImageRef,
    ImportSummary, MmEditCase, ProbeKind, IMAGE_MAX_BYTES, METHODS,
};
use unike_shared::routes;

use crate::api;
use crate::format::base64;
use crate::live::LiveEvents;
use crate::session::{RequireSession, SessionCtx, WorkspacePicker};

fn probe_name(k: ProbeKind) -> &'static str {
    match k {
        ProbeKind::Reliability => "Edit question",
        ProbeKind::TGenerality => "Rephrased question",
        ProbeKind::MGenerality => "Another image of the entity",
        ProbeKind::TLocality => "Unrelated text question",
        ProbeKind::MLocality => "Unrelated image question",
        ProbeKind::Portability => "Portability (one hop)",
    }
}

#[component]
pub fn Playground() -> impl IntoView {
    view! {
        <h1>"Playground"</h1>
        <RequireSession>
            <PlaygroundBody/>
        </RequireSession>
    }
}

#[component]
fn PlaygroundBody() -> impl IntoView {
    let ctx = SessionCtx::get();
    let gallery = LocalResource::new(|| api::get_json::<Vec<GalleryItem>>(routes::GALLERY));
    let image = RwSignal::new(None::<ImageRef>);
    let preview = RwSignal::new(None::<String>);
    let question = RwSignal::new(String::new());
    let target = RwSignal::new(String::new());
    let method = RwSignal::new(METHODS[0].to_string());
    let answer = RwSignal::new(None::<Result<AnswerResponse, String>>);
    let applied = RwSignal::new(None::<Result<AppliedEdit, String>>);
    let busy = RwSignal::new(false);
    let stack = RwSignal::new(None::<Result<EditStack, String>>);
    let notice = RwSignal::new(None::<String>);
    // Why an upload was refused (shown under the upload field).
    let upload_note = RwSignal::new(None::<String>);
    // Edits whose undo is on its way (their buttons are disabled meanwhile).
    let undoing = RwSignal::new(Vec::<i64>::new());

    let load_stack = move || {
        if let Some(ws) = ctx.workspace.get_untracked() {
            leptos::task::spawn_local(async move {
                stack.set(Some(api::get_json::<EditStack>(&routes::edits(ws)).await.map_err(|e| e.to_string())));
            });
        }
    };
    Effect::new(move |_| {
        ctx.workspace.track();
        load_stack();
    });
    // Teammates' edits and undos arrive live.
    let live = LiveEvents::new(ctx.workspace, crate::live::EDITS);
    Effect::new(move |_| {
        if live.tick.get() > 0 {
            load_stack();
        }
    });

    let pick = move |item: GalleryItem| {
        image.set(Some(ImageRef::Gallery { id: item.id.clone() }));
        preview.set(Some(item.url.clone()));
        question.set(item.question.clone());
        target.set(item.target.clone());
        answer.set(None);
        applied.set(None);
    };
    let upload = move |ev: leptos::ev::Event| {
        let input: leptos::web_sys::HtmlInputElement = event_target(&ev);
        let Some(file) = input.files().and_then(|f| f.get(0)) else { return };
        answer.set(None);
        applied.set(None);
        if file.size() > IMAGE_MAX_BYTES as f64 {
            upload_note.set(Some(format!(
                "{} is larger than the {} MB an image may have.",
                file.name(),
                IMAGE_MAX_BYTES / (1024 * 1024)
            )));
            input.set_value("");
            return;
        }
        leptos::task::spawn_local(async move {
            let Ok(buf) = wasm_bindgen_futures::JsFuture::from(file.array_buffer()).await else {
                upload_note.set(Some(format!("{} could not be read.", file.name())));
                return;
            };
            let bytes = js_sys::Uint8Array::new(&buf).to_vec();
            let b64 = base64(&bytes);
            preview.set(Some(format!("data:{};base64,{b64}", file.type_())));
            image.set(Some(ImageRef::Upload { base64: b64 }));
            upload_note.set(None);
        });
    };
    let ask = move |_| {
        let Some(ws) = ctx.workspace.get_untracked() else { return };
        let req = AnswerRequest { image: image.get_untracked(), question: question.get_untracked() };
        busy.set(true);
        leptos::task::spawn_local(async move {
            answer.set(Some(api::post_json(&routes::answer(ws), &req).await.map_err(|e| e.to_string())));
            busy.set(false);
        });
    };
    let apply = move |_| {
        let Some(ws) = ctx.workspace.get_untracked() else { return };
        let req = EditRequest {
            image: image.get_untracked(),
            question: question.get_untracked(),
            target: target.get_untracked(),
            method: method.get_untracked(),
            seed: 0,
        };
        busy.set(true);
        applied.set(None);
        leptos::task::spawn_local(async move {
            applied.set(Some(api::post_json(&routes::edits(ws), &req).await.map_err(|e| e.to_string())));
            busy.set(false);
            load_stack();
            ctx.load_workspaces().await; // the picker shows each workspace's edit count
        });
    };
    let undo = move |id: i64| {
        let Some(ws) = ctx.workspace.get_untracked() else { return };
        if undoing.with_untracked(|u| u.contains(&id)) {
            return;
        }
        undoing.update(|u| u.push(id));
        leptos::task::spawn_local(async move {
            match api::delete_json::<EditStack>(&routes::edit(ws, id)).await {
                Ok(s) => stack.set(Some(Ok(s))),
                // The stack stays as it was; the error says why this edit was not undone.
                Err(e) => notice.set(Some(format!("Edit {id} was not undone: {e}"))),
            }
            undoing.update(|u| u.retain(|x| *x != id));
            ctx.load_workspaces().await;
        });
    };
    let import = move |ev: leptos::ev::Event| {
        let Some(ws) = ctx.workspace.get_untracked() else { return };
        let input: leptos::web_sys::HtmlInputElement = event_target(&ev);
        let Some(file) = input.files().and_then(|f| f.get(0)) else { return };
        // Cleared, so choosing the same file again imports it again.
        input.set_value("");
        notice.set(Some(format!("Importing {}…", file.name())));
        leptos::task::spawn_local(async move {
            let text = wasm_bindgen_futures::JsFuture::from(file.text()).await.ok().and_then(|t| t.as_string());
            let parsed = text
                .ok_or_else(|| "the file could not be read".to_string())
                .and_then(|t| serde_json::from_str::<Vec<MmEditCase>>(&t).map_err(|e| format!("not MMEdit JSON: {e}")));
            notice.set(Some(match parsed {
                Ok(cases) => {
                    match api::post_json::<_, ImportSummary>(&routes::cases(ws), &CaseImport { cases }).await {
                        Ok(s) => format!("Imported {} cases.", s.imported),
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e,
            }));
        });
    };

    let gallery_view = move || {
        Suspend::new(async move {
            gallery.await.map(|items| {
                items
                    .into_iter()
                    .map(|item| {
                        let it = item.clone();
                        let selected = {
                            let id = item.id.clone();
                            move || image.with(|i| matches!(i, Some(ImageRef::Gallery { id: g }) if *g == id))
                        };
                        view! {
                            <li>
                                <button type="button" class="thumb" class:selected=selected.clone()
                                    aria-pressed=move || if selected() { "true" } else { "false" }
                                    aria-label=format!("{} image: {}", item.task, item.question)
                                    on:click=move |_| pick(it.clone())>
                                    <img src=item.url.clone() alt="" width="64" height="64"/>
                                </button>
                            </li>
                        }
                    })
                    .collect_view()
            })
        })
    };
    let method_options = METHODS.iter().map(|m| view! { <option value=*m>{*m}</option> }).collect_view();

    view! {
        <WorkspacePicker/>
        <div class="grid two">
            <section class="card" aria-labelledby="pick-heading">
                <h2 id="pick-heading">"1. Image"</h2>
                <Suspense fallback=|| view! { <p class="status" role="status">"Loading the gallery…"</p> }>
                    <ErrorBoundary fallback=|errors| {
                        let why = move || errors.get().into_iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; ");
                        view! { <p class="status error" role="alert">"The gallery could not be loaded: " {why}</p> }
                    }>
                        <ul class="gallery">{gallery_view}</ul>
                    </ErrorBoundary>
                </Suspense>
                <label class="field">"…or upload a PNG or JPEG"
                    <input type="file" accept="image/png,image/jpeg" on:change=upload/>
                </label>
                {move || upload_note.get().map(|n| view! { <p class="status error" role="alert">{n}</p> })}
                {move || preview.get().map(|src| view! { <img class="preview" src=src alt="The chosen image" width="128" height="128"/> })}
            </section>
            <section class="card" aria-labelledby="ask-heading">
                <h2 id="ask-heading">"2. Ask, then edit"</h2>
                <label class="field">"Question"
                    <input id="question" prop:value=question on:input=move |ev| question.set(event_target_value(&ev))/>
                </label>
                <button id="ask" type="button" class="button" disabled=busy on:click=ask>"Ask"</button>
                {move || answer.get().map(|a| match a {
                    Ok(a) => view! { <p class="answer" id="answer">"Answer: " <strong>{a.answer}</strong>
                        {format!(" ({} edits applied, {:.0} ms)", a.edits, a.ms)}</p> }.into_any(),
                    Err(e) => view! { <p class="status error" role="alert">{e}</p> }.into_any(),
                })}
                <label class="field">"Target answer"
                    <input id="target" prop:value=target on:input=move |ev| target.set(event_target_value(&ev))/>
                </label>
                <label class="field">"Method"
                    <select id="method" on:change=move |ev| method.set(event_target_value(&ev))>{method_options}</select>
                </label>
                <button id="apply" type="button" class="button" disabled=busy on:click=apply>"Apply edit"</button>
                <Show when=move || busy.get()><p class="status" role="status">"Working…"</p></Show>
                {move || applied.get().map(|r| match r {
                    Ok(e) => view! { <EditResult edit=e/> }.into_any(),
                    Err(e) => view! { <p class="status error" role="alert">{e}</p> }.into_any(),
                })}
            </section>
        </div>
        <section class="card" aria-labelledby="stack-heading">
            <h2 id="stack-heading">"Edit stack"</h2>
            {move || match stack.get() {
                None => view! { <p class="status" role="status">"Loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="status error" role="alert">{e}</p> }.into_any(),
                Some(Ok(s)) if s.edits.is_empty() => view! { <p id="stack-empty">"No edits yet: the model answers as trained."</p> }.into_any(),
                Some(Ok(s)) => view! {
                    <ol class="stack" id="stack">
                        {s.edits.into_iter().map(|e| {
                            let id = e.id;
                            view! {
                                <li>
                                    <span>{format!("#{} {} — {} → {} ({}, by {})", e.id, e.method, e.question, e.target, e.created_at, e.author)}</span>
                                    <button type="button" class="button small secondary" on:click=move |_| undo(id)
                                        disabled=move || undoing.with(|u| u.contains(&id))
                                        aria-label=format!("Undo edit {id}")>"Undo"</button>
                                </li>
                            }
                        }).collect_view()}
                    </ol>
                }.into_any(),
            }}
            <div class="actions">
                {move || ctx.workspace.get().map(|ws| view! {
                    <a class="button secondary" href=routes::cases(ws) download="cases.json">"Export cases (MMEdit JSON)"</a>
                })}
                <label class="button secondary">"Import MMEdit JSON"
                    <input type="file" accept="application/json" class="visually-hidden" on:change=import/>
                </label>
            </div>
            {move || notice.get().map(|n| view! { <p class="status" role="status">{n}</p> })}
        </section>
    }
}

/// A probability for a table: three significant digits, small ones in scientific notation.
fn probability(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

/// The post-edit answer and the probes, pass or fail, with the expected answer's probability before and after (the
/// edit inspector).
#[component]
fn EditResult(edit: AppliedEdit) -> impl IntoView {
    let passed = edit.probes.iter().filter(|p| p.pass).count();
    let total = edit.probes.len();
    view! {
        <div class="result" id="edit-result">
            <p>"Before: " <strong>{edit.before.clone()}</strong> " · After: " <strong id="after">{edit.after.clone()}</strong>
               {format!(" · {} in {:.0} ms · {passed}/{total} probes pass", edit.method, edit.edit_ms)}</p>
            <div class="table-scroll">
                <table>
                    <caption>"Probes"</caption>
                    <thead><tr><th scope="col">"Probe"</th><th scope="col">"Expected"</th>
                        <th scope="col" title="The greedy answer, and the probability of the expected answer (teacher-forced: the product over its tokens and the end of sequence; each token's below), before → after the edit">"Before → after"</th>
                        <th scope="col">"Result"</th></tr></thead>
                    <tbody>
                        {edit.probes.into_iter().map(|p| {
                            let joint = p.answer_probability()
                                .map(|(b, a)| format!("{} → {}", probability(b), probability(a)))
                                .unwrap_or_else(|| "–".into());
                            let per_token = p.tokens.iter()
                                .map(|t| format!("{} {} → {}", t.token.trim(), probability(t.before), probability(t.after)))
                                .collect::<Vec<_>>().join(" · ");
                            // The edit's extra neurons (T-Patcher, UniKE) on this probe: how many add their value.
                            let neurons = (!p.neurons.is_empty()).then(|| {
                                let fired = p.neurons.iter().filter(|n| n.fired).count();
                                let top = p.neurons.iter().map(|n| n.pre_activation).fold(f64::MIN, f64::max);
                                let detail = p.neurons.iter()
                                    .map(|n| format!("layer {} neuron {}: {:.2}", n.layer, n.neuron, n.pre_activation))
                                    .collect::<Vec<_>>().join("; ");
                                view! {
                                    <small class="neurons" title=format!("Largest pre-activation of each new neuron over the probe (it adds its value only above 0): {detail}")>
                                        {format!("neurons fired {fired}/{} (max {top:.2})", p.neurons.len())}
                                    </small>
                                }
                            });
                            view! {
                            <tr class:fail=!p.pass>
                                <th scope="row">{probe_name(p.kind)}
                                    {p.image_url.map(|u| view! { <img src=u alt="" width="32" height="32" class="inline-thumb"/> })}
                                    <span class="probe-question">{p.question}</span>
                                </th>
                                <td>{p.expected}</td>
                                <td class="token-probs"><span class="answers">{format!("{} → {}", p.before, p.after)}</span>
                                    <span class="joint" title="P(expected) before → after">{joint}</span>
                                    <small class="per-token">{per_token}</small>{neurons}
                                    {p.scope.map(|sc| {
                                        let routed = if sc.score >= sc.threshold { "the edit's counterfactual model answers" } else { "the base model answers" };
                                        view! { <small class="scope" title="SERAC's scope classifier: the probability that this probe is about the edit">
                                            {format!("scope {:.3} (threshold {:.2}: {routed})", sc.score, sc.threshold)}</small> }
                                    })}
                                    {p.knowledge_share.map(|a| view! {
                                        <small class="scope" title="UniKE: the share α of the retrieved in-context knowledge in the attention output (mean over the edited layers and the answer's positions)">
                                            {format!("knowledge share α {a:.3}")}</small>
                                    })}
                                    {(!p.retrieved.is_empty()).then(|| view! {
                                        <details class="retrieved">
                                            <summary title="UniKE: the in-context knowledge the position predicting the answer retrieves, at the edit's top layer, best first (cosine of the centred question states)">
                                                {format!("retrieves {}", if p.retrieved.first().is_some_and(|r| r.own) { "the edit first" } else { "memory first" })}</summary>
                                            <ol>{p.retrieved.iter().map(|r| view! {
                                                <li class=if r.own { "own" } else { "memory" }>{format!("{:.3} · {}{} → {}", r.score, if r.own { "this edit: " } else { "" }, r.question, r.answer)}</li>
                                            }).collect_view()}</ol>
                                        </details>
                                    })}</td>
                                <td>{if p.pass { "pass" } else { "fail" }}</td>
                            </tr>
                        }}).collect_view()}
                    </tbody>
                </table>
            </div>
            {(!edit.demonstrations.is_empty()).then(|| view! {
                <p class="hint" id="edit-demonstrations">"The edit's in-context demonstrations (IKE: in front of every prompt; SERAC: the counterfactual model's context, for inputs in scope):"</p>
                <ul class="demonstrations">{edit.demonstrations.iter().map(|d| view! { <li>{d.clone()}</li> }).collect_view()}</ul>
            })}
        </div>
    }
}
