//! A job: one request for the model (the images of an OpenAI call, or a chat turn) from the
//! moment it is queued until it is done, failed or cancelled. Everything that happens to it is
//! an [`Event`], kept in order, so that a client that subscribes late (Server-Sent Events, or a
//! handler waiting for the result) sees the whole story from the start and never misses one;
//! each change wakes the waiters through a watch channel.

use super::error::ApiError;
use crate::cancel::Token;
use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::watch;

/// One image a job made.
#[derive(Debug, Clone, Serialize)]
pub struct OutputImage {
    /// Where to fetch it on this server (a path).
    pub url: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// The PNG itself, for the OpenAI endpoints' `b64_json`.
    #[serde(skip)]
    pub png: Arc<Vec<u8>>,
}

/// What a finished job made.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Output {
    pub images: Vec<OutputImage>,
    /// The chat and the index of the turn it recorded, for a chat turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn: Option<usize>,
    /// Seconds the model spent making the images (the rest of a job is reading and writing).
    pub model_seconds: f64,
}

/// What happens to a job, in order: `queued` (again whenever its place changes), `started`,
/// one `progress` per sampling step of each image, then one of `done`, `failed`, `cancelled`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Waiting, with `position` jobs ahead of it.
    Queued {
        position: usize,
    },
    Started,
    /// Step `step` (from 1) of `steps` of image `image` (from 0) of `images`.
    Progress {
        image: usize,
        images: usize,
        step: usize,
        steps: usize,
    },
    Done {
        output: Output,
    },
    Failed {
        status: u16,
        message: String,
    },
    Cancelled,
}

impl Event {
    /// The event's name (its `type`).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Queued { .. } => "queued",
            Event::Started => "started",
            Event::Progress { .. } => "progress",
            Event::Done { .. } => "done",
            Event::Failed { .. } => "failed",
            Event::Cancelled => "cancelled",
        }
    }

    fn is_final(&self) -> bool {
        matches!(
            self,
            Event::Done { .. } | Event::Failed { .. } | Event::Cancelled
        )
    }
}

/// What a subscriber at event index `i` gets next.
#[derive(Debug, Clone)]
pub enum Next {
    Event(Event),
    /// The job is over and every event was seen.
    End,
    /// Nothing new yet.
    Wait,
}

#[derive(Debug)]
struct State {
    events: Vec<Event>,
    position: Option<usize>,
    progress: Option<(usize, usize, usize, usize)>,
    created: Instant,
    started: Option<Instant>,
    finished: Option<Instant>,
}

/// A job and its story.
#[derive(Debug)]
pub struct Job<W> {
    pub id: String,
    /// `images` (an OpenAI call) or `turn` (a chat turn).
    pub kind: &'static str,
    /// Cancels the job while it runs.
    pub token: Token,
    work: Mutex<Option<W>>,
    state: Mutex<State>,
    changed: watch::Sender<usize>,
}

/// A fresh random job id (32 hex digits).
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl<W> Job<W> {
    /// A job `id` of `kind` that will run `work`.
    pub fn new(id: String, kind: &'static str, work: W) -> Arc<Self> {
        Arc::new(Job {
            id,
            kind,
            token: Token::default(),
            work: Mutex::new(Some(work)),
            state: Mutex::new(State {
                events: Vec::new(),
                position: None,
                progress: None,
                created: Instant::now(),
                started: None,
                finished: None,
            }),
            changed: watch::channel(0).0,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock left plain data behind: go on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The work, for the worker that runs the job (once).
    pub fn take_work(&self) -> Option<W> {
        self.work.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Records `event` and wakes every waiter; nothing is recorded after the final event.
    pub fn push(&self, event: Event) {
        let count = {
            let mut s = self.state();
            if s.events.last().is_some_and(Event::is_final) {
                return;
            }
            match &event {
                Event::Queued { position } => {
                    if s.position == Some(*position) {
                        return;
                    }
                    s.position = Some(*position);
                }
                Event::Started => {
                    s.position = None;
                    s.started = Some(Instant::now());
                }
                Event::Progress {
                    image,
                    images,
                    step,
                    steps,
                } => s.progress = Some((*image, *images, *step, *steps)),
                _ => {
                    s.position = None;
                    s.finished = Some(Instant::now());
                }
            }
            s.events.push(event);
            s.events.len()
        };
        self.changed.send_replace(count);
    }

    /// A receiver that changes with every event.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }

    /// The event at index `i`, or whether the job is over.
    pub fn next(&self, i: usize) -> Next {
        let s = self.state();
        match s.events.get(i) {
            Some(e) => Next::Event(e.clone()),
            None if s.events.last().is_some_and(Event::is_final) => Next::End,
            None => Next::Wait,
        }
    }

    /// Whether the job is over.
    pub fn is_over(&self) -> bool {
        self.state().events.last().is_some_and(Event::is_final)
    }

    /// How the job ended, once it has.
    pub fn outcome(&self) -> Option<Result<Output, ApiError>> {
        match self.state().events.last()? {
            Event::Done { output } => Some(Ok(output.clone())),
            Event::Failed { status, message } => Some(Err(ApiError {
                status: axum::http::StatusCode::from_u16(*status)
                    .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                ..ApiError::bad_request(message.clone())
            })),
            Event::Cancelled => Some(Err(ApiError::unavailable("the job was cancelled"))),
            _ => None,
        }
    }

    /// Lets go of the PNGs the job made, once its caller has them (they are not kept in memory
    /// for the jobs remembered).
    pub fn release_images(&self) {
        if let Some(Event::Done { output }) = self.state().events.last_mut() {
            for image in &mut output.images {
                image.png = Arc::default();
            }
        }
    }

    /// Waits until the job is over and returns how it ended.
    pub async fn finished(&self) -> Result<Output, ApiError> {
        let mut rx = self.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return Err(ApiError::unavailable("the job was dropped"));
            }
        }
    }

    /// Seconds spent waiting in the queue and running (so far).
    pub fn seconds(&self) -> (f64, f64) {
        let s = self.state();
        let now = Instant::now();
        let queued = s.started.unwrap_or(s.finished.unwrap_or(now)) - s.created;
        let running = s
            .started
            .map_or(0.0, |t| (s.finished.unwrap_or(now) - t).as_secs_f64());
        (queued.as_secs_f64(), running)
    }

    /// The job as the API shows it: id, kind, status, queue position, progress, result or error.
    pub fn describe(&self) -> serde_json::Value {
        let (queued, running) = self.seconds();
        let s = self.state();
        let status = match s.events.last() {
            None | Some(Event::Queued { .. }) => "queued",
            Some(Event::Done { .. }) => "done",
            Some(Event::Failed { .. }) => "failed",
            Some(Event::Cancelled) => "cancelled",
            Some(_) => "running",
        };
        let mut out = serde_json::json!({
            "id": self.id,
            "kind": self.kind,
            "status": status,
            "position": s.position,
            "cancel_requested": self.token.is_cancelled(),
            "seconds": {"queued": queued, "running": running},
            "events": format!("/ace/jobs/{}/events", self.id),
        });
        if let Some((image, images, step, steps)) = s.progress {
            out["progress"] =
                serde_json::json!({"image": image, "images": images, "step": step, "steps": steps});
        }
        match s.events.last() {
            Some(Event::Done { output }) => out["output"] = serde_json::json!(output),
            Some(Event::Failed { message, .. }) => out["error"] = message.clone().into(),
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_kept_in_order_and_end_with_the_final_one() {
        let job = Job::new(new_id(), "images", ());
        assert!(matches!(job.next(0), Next::Wait));
        job.push(Event::Queued { position: 1 });
        job.push(Event::Queued { position: 1 });
        job.push(Event::Queued { position: 0 });
        job.push(Event::Started);
        for step in 1..=3 {
            job.push(Event::Progress {
                image: 0,
                images: 1,
                step,
                steps: 3,
            });
        }
        assert_eq!(job.describe()["status"], "running");
        assert_eq!(job.describe()["progress"]["step"], 3);
        job.push(Event::Done {
            output: Output::default(),
        });
        job.push(Event::Cancelled);
        let names: Vec<&str> = (0..)
            .map_while(|i| match job.next(i) {
                Next::Event(e) => Some(e.name()),
                _ => None,
            })
            .collect();
        assert_eq!(
            names,
            ["queued", "queued", "started", "progress", "progress", "progress", "done"]
        );
        assert!(matches!(job.next(names.len()), Next::End));
        assert!(job.outcome().unwrap().is_ok());
        assert_eq!(job.describe()["status"], "done");
    }

    #[test]
    fn images_are_let_go_once_taken() {
        let job = Job::new(new_id(), "images", ());
        let image = OutputImage {
            url: "/ace/images/x.png".into(),
            seed: 1,
            width: 1,
            height: 1,
            png: Arc::new(vec![1, 2, 3]),
        };
        job.push(Event::Done {
            output: Output {
                images: vec![image],
                ..Output::default()
            },
        });
        let taken = job.outcome().unwrap().unwrap();
        job.release_images();
        assert_eq!(taken.images[0].png.len(), 3);
        assert!(job.outcome().unwrap().unwrap().images[0].png.is_empty());
    }

    #[test]
    fn a_waiter_wakes_when_the_job_ends() {
        let job = Job::new(new_id(), "turn", ());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let j = job.clone();
        let outcome = rt.block_on(async move {
            let waiter = tokio::spawn(async move { j.finished().await });
            tokio::task::yield_now().await;
            job.push(Event::Failed {
                status: 400,
                message: "bad mask".into(),
            });
            waiter.await.unwrap()
        });
        let e = outcome.unwrap_err();
        assert_eq!((e.status.as_u16(), e.message.as_str()), (400, "bad mask"));
    }
}
