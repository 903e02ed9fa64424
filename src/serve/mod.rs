//! `ace serve`: one loaded model behind the paper's chat bot (appendix G.2) in the browser and
//! an HTTP API for scripts. The model runs jobs one at a time on the thread that loaded it, fed
//! by a bounded queue; the HTTP side (axum on tokio, on threads of its own) only parses,
//! checks, queues and reports. The API speaks the OpenAI
//! Images API (`/v1/images/generations`, `/v1/images/edits`) so that existing clients work
//! unchanged, and ACE's own endpoints (`/ace/...`) for chats, jobs, progress and the model.
//! Chats are session files of `ace edit --session` under the data folder.
//!
//! Binding an address other than loopback needs a token (bearer auth on everything but the
//! health check). A stop asked for by a signal ([`crate::cancel`]) stops taking connections and
//! jobs, cancels the waiting jobs and the running one at its next step, and returns once the
//! open requests are answered: every file was written atomically, so a restart finds every
//! finished turn.

pub mod auth;
pub mod error;
pub mod events;
pub mod info;
pub mod jobs;
pub mod loras;
pub mod openai;
pub mod queue;
pub mod requests;
pub mod sessions;
pub mod settings;
pub mod store;
pub mod upload;
pub mod work;

use crate::pipeline::Ace;
use crate::{Error, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body (a form with several large photos).
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long open requests get to finish once a stop was asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How to serve.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    /// Bearer token required on every endpoint but the health check.
    pub token: Option<String>,
    /// Most jobs waiting for the model.
    pub queue: usize,
    pub data_dir: PathBuf,
    /// Longest wait of an OpenAI call for its images.
    pub timeout: Duration,
    /// The model's name (the preset or config), device and dtype, for `/ace/model`.
    pub model_name: String,
    pub device: String,
    pub dtype: String,
    /// The LoRA adapters of requests that name none, and those they may name.
    pub loras: loras::LoraLibrary,
}

/// The request log: one call per answered request.
pub type RequestLog = Arc<dyn Fn(&requests::Line) + Send + Sync>;

/// What every handler shares.
pub struct App {
    pub queue: Arc<queue::Queue<work::Work>>,
    pub store: store::Store,
    pub cfg: crate::config::AceConfig,
    pub options: Options,
    pub log: Option<RequestLog>,
}

/// The shared state as handlers take it.
pub type AppState = Arc<App>;

/// The routes with their limits, auth and request log.
pub fn router(app: AppState) -> Router {
    let api = Router::new()
        .route("/", get(info::page))
        .route("/ace/health", get(info::health))
        .route("/ace/model", get(info::model))
        .route("/ace/tasks", get(info::tasks))
        .route("/v1/models", get(info::models))
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/images/edits", post(openai::edits))
        .route("/ace/images/{name}", get(openai::image))
        .route("/ace/sessions", get(sessions::list).post(sessions::create))
        .route("/ace/sessions/{id}", get(sessions::show))
        .route("/ace/sessions/{id}/turns", post(sessions::add_turn))
        .route("/ace/sessions/{id}/retry", post(sessions::retry))
        .route(
            "/ace/sessions/{id}/turns/{turn}/{part}",
            get(sessions::turn_image),
        )
        .route(
            "/ace/sessions/{id}/turns/{turn}/{part}/{index}",
            get(sessions::turn_input),
        )
        .route("/ace/jobs/{id}", get(events::show))
        .route("/ace/jobs/{id}/events", get(events::stream))
        .route("/ace/jobs/{id}/cancel", post(events::cancel))
        .fallback(info::not_found)
        .method_not_allowed_fallback(info::method_not_allowed);
    api.layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::check,
        ))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            requests::log,
        ))
        .with_state(app)
}

/// Serves `model` as `options` say until a stop is asked for ([`crate::cancel::requested`]);
/// `ready` is told the address once it listens, `log` each answered request.
pub fn run(
    model: Ace,
    options: Options,
    log: Option<RequestLog>,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let addr = auth::bind_address(&options.host, options.port, options.token.as_deref())?;
    let store = store::Store::open(&options.data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Image decoding and file work: bounded, so a burst of requests cannot take the memory.
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| Error::io(format!("listening on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io(format!("listening on {addr}"), e))?;
    let app = Arc::new(App {
        queue: Arc::new(queue::Queue::new(options.queue)),
        store: store.clone(),
        cfg: model.config().clone(),
        options,
        log,
    });
    ready(local);
    let (queue, loras) = (app.queue.clone(), app.options.loras.clone());
    let http = std::thread::Builder::new()
        .name("ace-http".into())
        .spawn(move || {
            // However the server ends, even by a panic, the model's loop ends with it.
            let _close = CloseOnDrop(app.queue.clone());
            let (closing, routes) = (app.queue.clone(), router(app.clone()));
            let served = runtime.block_on(async move {
                let stop = async move {
                    stop_requested().await;
                    closing.close();
                };
                let server = axum::serve(listener, routes).with_graceful_shutdown(stop);
                tokio::select! {
                    r = std::future::IntoFuture::into_future(server) => r,
                    () = async {
                        stop_requested().await;
                        tokio::time::sleep(DRAIN_TIMEOUT).await;
                    } => Ok(()),
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
            served
        })
        .map_err(|e| Error::io("HTTP thread", e))?;
    // The model stays on the thread that loaded it (where a GPU context is current).
    while let Some(job) = queue.next() {
        let seconds = work::run(&model, &store, &loras, &job);
        queue.finished(seconds);
    }
    let served = http
        .join()
        .map_err(|_| Error::invalid("HTTP thread", "stopped by a panic"))?;
    served.map_err(|e| Error::io(format!("serving on {local}"), e))?;
    Ok(())
}

/// Closes the queue when dropped.
struct CloseOnDrop(Arc<queue::Queue<work::Work>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Returns once a stop was asked for (a signal, [`crate::cancel::request`]).
async fn stop_requested() {
    while !crate::cancel::requested() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
