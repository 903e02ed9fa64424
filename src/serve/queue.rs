//! The one model's queue: jobs wait in order, at most `capacity` of them (a submission past
//! that is answered 429 with a `Retry-After` guessed from the recent jobs' times), the worker
//! takes them one at a time, and any job can be cancelled: a waiting one leaves the queue at
//! once, the running one stops at its next sampling step. Each waiting job hears its place
//! whenever it changes. Finished jobs are kept for a while so that clients can read them.

use super::error::{ApiError, ApiResult};
use super::jobs::{Event, Job};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// How many jobs (finished ones included) are remembered.
const KEPT_JOBS: usize = 1000;

struct Inner<W> {
    waiting: VecDeque<Arc<Job<W>>>,
    running: Option<Arc<Job<W>>>,
    jobs: HashMap<String, Arc<Job<W>>>,
    /// Job ids, oldest first, to forget old ones.
    order: VecDeque<String>,
    closed: bool,
    /// Running mean of a job's seconds, for `Retry-After`.
    mean_seconds: Option<f64>,
}

/// The bounded queue in front of the worker.
pub struct Queue<W> {
    inner: Mutex<Inner<W>>,
    ready: Condvar,
    capacity: usize,
}

impl<W> Queue<W> {
    /// A queue of at most `capacity` waiting jobs (at least 1).
    pub fn new(capacity: usize) -> Self {
        Queue {
            inner: Mutex::new(Inner {
                waiting: VecDeque::new(),
                running: None,
                jobs: HashMap::new(),
                order: VecDeque::new(),
                closed: false,
                mean_seconds: None,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<W>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`: 429 when the queue is full, 503 when the server is stopping.
    pub fn submit(&self, job: Arc<Job<W>>) -> ApiResult<Arc<Job<W>>> {
        let mut q = self.lock();
        if q.closed {
            return Err(ApiError::unavailable("the server is stopping"));
        }
        if q.waiting.len() >= self.capacity {
            let ahead = q.waiting.len() + 1;
            let retry = (q.mean_seconds.unwrap_or(1.0) * ahead as f64).ceil();
            return Err(ApiError::queue_full(
                q.waiting.len(),
                retry.clamp(1.0, 3600.0) as u64,
            ));
        }
        forget_old(&mut q);
        job.push(Event::Queued {
            position: q.waiting.len(),
        });
        q.jobs.insert(job.id.clone(), job.clone());
        q.order.push_back(job.id.clone());
        q.waiting.push_back(job.clone());
        self.ready.notify_one();
        Ok(job)
    }

    /// The job `id`, if it is known.
    pub fn get(&self, id: &str) -> Option<Arc<Job<W>>> {
        self.lock().jobs.get(id).cloned()
    }

    /// Cancels job `id`: a waiting job leaves the queue (its `cancelled` event is sent), the
    /// running one is asked to stop. `None` for an unknown job.
    pub fn cancel(&self, id: &str) -> Option<Arc<Job<W>>> {
        let mut q = self.lock();
        let job = q.jobs.get(id).cloned()?;
        job.token.cancel();
        if let Some(i) = q.waiting.iter().position(|j| j.id == id) {
            q.waiting.remove(i);
            job.push(Event::Cancelled);
            renumber(&q.waiting);
        }
        Some(job)
    }

    /// The next job to run, waiting for one; `None` once the queue is closed.
    pub fn next(&self) -> Option<Arc<Job<W>>> {
        let mut q = self.lock();
        loop {
            if q.closed {
                return None;
            }
            if let Some(job) = q.waiting.pop_front() {
                renumber(&q.waiting);
                q.running = Some(job.clone());
                return Some(job);
            }
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Records that the running job took `seconds`.
    pub fn finished(&self, seconds: f64) {
        let mut q = self.lock();
        q.running = None;
        q.mean_seconds = Some(match q.mean_seconds {
            Some(m) => 0.7 * m + 0.3 * seconds,
            None => seconds,
        });
    }

    /// Stops taking jobs: every waiting job is cancelled, the worker's next [`Queue::next`]
    /// returns `None`. The running job is left to stop by itself.
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        for job in q.waiting.drain(..) {
            job.token.cancel();
            job.push(Event::Cancelled);
        }
        self.ready.notify_all();
    }

    /// Jobs waiting, and whether one is running.
    pub fn load(&self) -> (usize, bool) {
        let q = self.lock();
        (q.waiting.len(), q.running.is_some())
    }
}

/// Tells each waiting job its place.
fn renumber<W>(waiting: &VecDeque<Arc<Job<W>>>) {
    for (position, job) in waiting.iter().enumerate() {
        job.push(Event::Queued { position });
    }
}

/// Forgets the oldest finished jobs beyond [`KEPT_JOBS`].
fn forget_old<W>(q: &mut Inner<W>) {
    let mut kept = VecDeque::new();
    while q.jobs.len() >= KEPT_JOBS {
        let Some(id) = q.order.pop_front() else { break };
        match q.jobs.get(&id) {
            Some(job) if !job.is_over() => kept.push_back(id),
            _ => {
                q.jobs.remove(&id);
            }
        }
    }
    while let Some(id) = kept.pop_back() {
        q.order.push_front(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::jobs::{new_id, Output};

    fn job() -> Arc<Job<()>> {
        Job::new(new_id(), "images", ())
    }

    #[test]
    fn a_full_queue_refuses_and_cancelled_jobs_leave_it() {
        let q = Queue::new(2);
        let (a, b, c) = (job(), job(), job());
        q.submit(a.clone()).unwrap();
        q.submit(b.clone()).unwrap();
        let e = q.submit(c.clone()).unwrap_err();
        assert_eq!(e.status, 429);
        assert_eq!(e.retry_after, Some(3));
        assert_eq!(b.describe()["position"], 1);
        q.cancel(&a.id).unwrap();
        assert_eq!(a.describe()["status"], "cancelled");
        assert_eq!(b.describe()["position"], 0);
        q.submit(c.clone()).unwrap();
        assert_eq!(q.next().unwrap().id, b.id);
        assert_eq!(q.load(), (1, true));
        b.push(Event::Done {
            output: Output::default(),
        });
        q.finished(10.0);
        q.close();
        assert!(q.next().is_none());
        assert_eq!(c.describe()["status"], "cancelled");
        assert_eq!(q.submit(job()).unwrap_err().status, 503);
        assert!(q.cancel("nope").is_none());
    }
}
