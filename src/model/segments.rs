//! Backward passes segment by segment. candle's `Tensor::backward` keeps the whole graph of the
//! forward pass (every intermediate of every block) alive until it returns, while the
//! gradients it makes pile up beside it, so a training step holds the weights, the optimizer's
//! moments, all gradients and all activations at once; PyTorch instead frees what each node
//! saved as its backward pass goes past it. Here a forward pass run under [`record`] cuts its
//! graph where a model says ([`cut`]: the DiT at its block boundaries), and
//! [`Segments::backward`] backpropagates the loss, then each segment from the last to the
//! first, dropping each segment's activations as soon as its gradients are out. The gradients
//! are the same sums as one pass over the whole graph would make. A segment can also be
//! [`recomputed`] instead of kept (gradient checkpointing, upstream `USE_GRAD_CHECKPOINT`):
//! the forward pass keeps only its output, and the backward pass runs it again.

use crate::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId, Var};
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    /// The cuts of the forward pass that [`record`] runs on this thread.
    static RECORDING: RefCell<Option<Vec<Cut>>> = const { RefCell::new(None) };
}

/// Where the graph was cut: the segment before the cut, and the variable that stands in for
/// its output in what follows.
struct Cut {
    source: Source,
    stand_in: Tensor,
}

/// The output of the segment before a cut, with its graph.
enum Source {
    /// Kept from the forward pass.
    Kept(Tensor),
    /// Computed again by the backward pass, under bf16 autocast when the forward pass was.
    Recomputed {
        segment: Box<dyn Fn() -> candle_core::Result<Tensor>>,
        autocast: bool,
    },
}

impl Source {
    fn is(&self, t: &Tensor) -> bool {
        matches!(self, Source::Kept(source) if source.id() == t.id())
    }

    /// The output with its graph: kept, or computed again.
    fn output(self) -> candle_core::Result<Tensor> {
        match self {
            Source::Kept(t) => Ok(t),
            Source::Recomputed { segment, autocast } if autocast => {
                crate::kernels::autocast_bf16(segment)
            }
            Source::Recomputed { segment, .. } => segment(),
        }
    }
}

/// The cuts of one recorded forward pass, in the order they were made.
#[derive(Default)]
pub struct Segments {
    cuts: Vec<Cut>,
}

/// Runs `forward` with [`cut`] recording the cuts it makes on this thread; returns its output
/// and the segments, to backpropagate with [`Segments::backward`].
pub fn record<T>(forward: impl FnOnce() -> T) -> (T, Segments) {
    /// Puts back the recording of an enclosing [`record`], also when `forward` panics.
    struct Restore(Option<Vec<Cut>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            RECORDING.with(|r| *r.borrow_mut() = outer);
        }
    }
    let _restore = Restore(RECORDING.with(|r| r.replace(Some(Vec::new()))));
    let out = forward();
    let cuts = RECORDING
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default();
    (out, Segments { cuts })
}

/// Inside [`record`]: a variable holding a copy of `t`, for the rest of the forward pass to
/// use instead, so that the graph behind `t` becomes a segment of its own; cutting the same
/// tensor again gives the same variable. Outside, and for a tensor with no graph behind it,
/// `t` itself.
pub fn cut(t: &Tensor) -> candle_core::Result<Tensor> {
    RECORDING.with(|r| {
        let mut recording = r.borrow_mut();
        let Some(cuts) = recording.as_mut() else {
            return Ok(t.clone());
        };
        if t.is_variable() || !t.track_op() {
            return Ok(t.clone());
        }
        if let Some(done) = cuts.iter().find(|c| c.source.is(t)) {
            return Ok(done.stand_in.clone());
        }
        let stand_in = Var::from_tensor(t)?.as_tensor().clone();
        cuts.push(Cut {
            source: Source::Kept(t.clone()),
            stand_in: stand_in.clone(),
        });
        Ok(stand_in)
    })
}

/// Inside [`record`]: runs `segment` and returns a variable holding a copy of its output,
/// keeping none of the segment's graph; the backward pass runs `segment` again to rebuild it
/// (gradient checkpointing: the activations of one segment at a time instead of all, for one
/// more forward pass of each). `segment` must compute the same values each time from what it
/// holds (weights, and tensors cut before it). Outside, `segment()`.
pub fn recomputed(
    segment: impl Fn() -> candle_core::Result<Tensor> + 'static,
) -> candle_core::Result<Tensor> {
    if !recording() {
        return segment();
    }
    let out = segment()?;
    if out.is_variable() || !out.track_op() {
        return Ok(out);
    }
    let stand_in = Var::from_tensor(&out)?.as_tensor().clone();
    drop(out);
    let cut = Cut {
        source: Source::Recomputed {
            segment: Box::new(segment),
            autocast: crate::kernels::autocast_active(),
        },
        stand_in: stand_in.clone(),
    };
    RECORDING.with(|r| {
        if let Some(cuts) = r.borrow_mut().as_mut() {
            cuts.push(cut);
        }
    });
    Ok(stand_in)
}

/// Whether this thread is inside [`record`].
pub fn recording() -> bool {
    RECORDING.with(|r| r.borrow().is_some())
}

impl Segments {
    /// Backpropagates `loss`, then each segment from the last cut to the first with the
    /// gradient its stand-in gathered, and hands each pass's gradients to `gather` (those of
    /// the variables the pass reached; a variable used in several segments comes in several
    /// parts, to be added up). A segment is freed once its pass is done, the loss's graph
    /// first. Without cuts this is `loss.backward()`.
    pub fn backward(
        self,
        loss: Tensor,
        mut gather: impl FnMut(&GradStore) -> Result<()>,
    ) -> Result<()> {
        let mut cuts = self.cuts;
        let mut gradients: HashMap<TensorId, Tensor> = HashMap::new();
        let mut root = loss;
        loop {
            let mut store = root.backward()?;
            drop(root);
            for cut in &cuts {
                // Detached: a gradient computed from tracked tensors (the weights) carries
                // their graph too, which the segment's pass would otherwise go into again.
                if let Some(g) = store.remove(&cut.stand_in).map(|g| g.detach()) {
                    let id = cut.stand_in.id();
                    let g = match gradients.remove(&id) {
                        Some(earlier) => (earlier + g)?,
                        None => g,
                    };
                    gradients.insert(id, g);
                }
            }
            gather(&store)?;
            drop(store);
            // The last segment left whose stand-in has a gradient: `sum(source * gradient)`
            // has the gradient of the stand-in as its own with respect to `source`.
            root = loop {
                let Some(cut) = cuts.pop() else {
                    return Ok(());
                };
                if let Some(g) = gradients.remove(&cut.stand_in.id()) {
                    break (cut.source.output()? * g)?.sum_all()?;
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// How the test's forward pass treats its graph.
    #[derive(Clone, Copy, Debug)]
    enum Graph {
        Whole,
        Cut,
        Recomputed,
    }

    /// `loss = sum((w2 * tanh(w1 * x + t))^2) + sum(t)`, with `t = 3 w1` used on both sides of
    /// the cut.
    fn forward(x: &Tensor, w1: &Var, w2: &Var, graph: Graph) -> Tensor {
        let t = (w1.as_tensor() * 3.0).unwrap();
        let hidden = |t: Tensor| {
            let (x, w1) = (x.clone(), w1.as_tensor().clone());
            move || (w1.broadcast_mul(&x)? + &t)?.tanh()
        };
        let (h, t2) = match graph {
            Graph::Whole => (hidden(t.clone())().unwrap(), t),
            Graph::Cut => (
                cut(&hidden(t.clone())().unwrap()).unwrap(),
                cut(&t).unwrap(),
            ),
            Graph::Recomputed => {
                let t = cut(&t).unwrap();
                (recomputed(hidden(t.clone())).unwrap(), t)
            }
        };
        let y = w2.as_tensor().broadcast_mul(&h).unwrap();
        (y.sqr().unwrap().sum_all().unwrap() + t2.sum_all().unwrap()).unwrap()
    }

    fn gradients(graph: Graph) -> (Vec<f32>, Vec<f32>, usize) {
        let dev = Device::Cpu;
        let x = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
        let w1 = Var::new(&[0.3f32, -0.2, 0.1], &dev).unwrap();
        let w2 = Var::new(&[1.5f32, 0.5, -2.0], &dev).unwrap();
        let (loss, segments) = record(|| forward(&x, &w1, &w2, graph));
        let cuts = segments.cuts.len();
        let mut g1 = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        let mut g2 = g1.clone();
        segments
            .backward(loss, |store| {
                if let Some(g) = store.get(w1.as_tensor()) {
                    g1 = (&g1 + g)?;
                }
                if let Some(g) = store.get(w2.as_tensor()) {
                    g2 = (&g2 + g)?;
                }
                Ok(())
            })
            .unwrap();
        (g1.to_vec1().unwrap(), g2.to_vec1().unwrap(), cuts)
    }

    #[test]
    fn cut_and_recomputed_graphs_give_the_gradients_of_the_whole_graph() {
        let (whole1, whole2, none) = gradients(Graph::Whole);
        assert_eq!(none, 0);
        // d/dw2 = 2 w2 tanh(w1 x + 3 w1)^2: for the first element, 3 tanh(1.05)^2.
        let h0 = (0.3f32 * 0.5 + 0.9).tanh();
        assert!((whole2[0] - 3.0 * h0 * h0).abs() < 1e-5, "{whole2:?}");
        for graph in [Graph::Cut, Graph::Recomputed] {
            let (cut1, cut2, cuts) = gradients(graph);
            assert_eq!(cuts, 2, "{graph:?}");
            for (a, b) in whole1.iter().zip(&cut1).chain(whole2.iter().zip(&cut2)) {
                assert!(
                    (a - b).abs() <= 1e-6,
                    "{graph:?}: {whole1:?} {whole2:?} vs {cut1:?} {cut2:?}"
                );
            }
        }
    }

    #[test]
    fn cutting_outside_a_recording_or_a_leaf_is_the_tensor_itself() {
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, 2.0], &dev).unwrap();
        let y = (w.as_tensor() * 2.0).unwrap();
        assert_eq!(cut(&y).unwrap().id(), y.id());
        assert!(!recording());
        let (ids, segments) = record(|| {
            assert!(recording());
            let a = cut(&y).unwrap();
            let b = cut(&y).unwrap();
            let leaf = cut(w.as_tensor()).unwrap();
            let plain = Tensor::new(&[1f32], &dev).unwrap();
            (
                a.id(),
                b.id(),
                leaf.id(),
                cut(&plain).unwrap().id() == plain.id(),
            )
        });
        assert!(!recording());
        assert_eq!(segments.cuts.len(), 1);
        assert_ne!(ids.0, y.id());
        assert_eq!(ids.0, ids.1);
        assert_eq!(ids.2, w.as_tensor().id());
        assert!(ids.3);
    }
}
