//! Building a model without its weights: a VarBuilder backend that records every tensor name and
//! shape a model asks for, handing out one-element zeros broadcast to the shape. It checks a
//! checkpoint against what a config needs, and full-size models against the release key lists,
//! without the memory of the weights.

use crate::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// A tensor name and shape.
pub type TensorSpec = (String, Vec<usize>);

/// The names and shapes `build` asks for, in order. `known`, when given, is the set of names
/// the weight source claims to hold (for models that look optional tensors up first); without
/// it every name counts as present.
pub fn requested_tensors<T, E: Into<Error>>(
    known: Option<HashSet<String>>,
    build: impl FnOnce(VarBuilder) -> std::result::Result<T, E>,
) -> Result<Vec<TensorSpec>> {
    let recorder = Recorder {
        requests: Arc::default(),
        known: known.map(Arc::new),
    };
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    build(vb).map_err(Into::into)?;
    let requests = recorder
        .requests
        .lock()
        .map_err(|_| Error::invalid("model layout", "tensor recording was interrupted"))?;
    Ok(requests.clone())
}

#[derive(Debug, Clone)]
struct Recorder {
    requests: Arc<Mutex<Vec<TensorSpec>>>,
    known: Option<Arc<HashSet<String>>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.requests
            .lock()
            .map_err(|_| candle_core::Error::Msg("recorder lock poisoned".into()))?
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("tensor {name} asked for without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.known.as_ref().is_none_or(|k| k.contains(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_names_and_shapes_in_order_without_allocating() {
        let specs = requested_tensors(None, |vb| -> candle_core::Result<_> {
            let a = vb.get((4096, 4096), "big.weight")?;
            assert_eq!(a.dims(), &[4096, 4096]);
            vb.pp("sub").get(3, "bias")
        })
        .unwrap();
        assert_eq!(
            specs,
            vec![
                ("big.weight".to_string(), vec![4096, 4096]),
                ("sub.bias".to_string(), vec![3]),
            ]
        );
    }

    #[test]
    fn known_names_answer_contains_tensor() {
        let known = HashSet::from(["a".to_string()]);
        requested_tensors(Some(known), |vb| -> candle_core::Result<_> {
            assert!(vb.contains_tensor("a") && !vb.contains_tensor("b"));
            Ok(())
        })
        .unwrap();
    }
}
