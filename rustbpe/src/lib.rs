//! BPE tokenizer training for nanochat-pl, built by maturin into `nanochat_pl._rustbpe`.
//!
//! Text streams in from a Python iterator in batches; each batch is split into chunks with a regex and the
//! distinct chunks are counted in parallel without the GIL (`count`), then the merges are learned from the
//! counts (`bpe`). Inference is tiktoken's job: `get_mergeable_ranks()` is what `tiktoken.Encoding` takes.
//!
//! The core modules know nothing of Python; the bindings below are compiled only with the `pyo3` feature,
//! so `cargo test` runs without a Python to link against.

pub mod bpe;
pub mod count;
pub mod pretokenize;
#[cfg(test)]
mod test_rng;

#[cfg(feature = "pyo3")]
mod python {
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyString};

    use crate::bpe::{self, Pair};
    use crate::count::{count_batch, ChunkCounts};
    use crate::pretokenize::{Splitter, DEFAULT_PATTERN};

    /// A byte-level BPE tokenizer trainer (GPT-4-style regex split, then merges).
    #[pyclass(module = "nanochat_pl._rustbpe")]
    pub struct Tokenizer {
        pattern: String,
        merges: Vec<Pair>,
        chars_seen: u64,
    }

    #[pymethods]
    impl Tokenizer {
        #[new]
        fn new() -> Self {
            Self { pattern: DEFAULT_PATTERN.to_string(), merges: Vec::new(), chars_seen: 0 }
        }

        /// Learn `vocab_size - 256` merges from the strings of `iterator`, taking `buffer_size` at a time.
        ///
        /// Only the chunk counts are kept, never the text. Among pairs with equal counts the smallest
        /// (left id, right id) is merged first. Returns the number of characters seen (also `chars_seen`).
        #[pyo3(signature = (iterator, vocab_size, pattern=None, buffer_size=8192))]
        fn train_from_iterator(
            &mut self,
            py: Python<'_>,
            iterator: &Bound<'_, PyAny>,
            vocab_size: i64,
            pattern: Option<&str>,
            buffer_size: usize,
        ) -> PyResult<u64> {
            if vocab_size < 256 {
                return Err(PyValueError::new_err(format!(
                    "vocab_size must be at least 256 (the byte tokens), got {vocab_size}"
                )));
            }
            let vocab_size = u32::try_from(vocab_size)
                .map_err(|_| PyValueError::new_err(format!("vocab_size {vocab_size} is over 2**32 - 1")))?;
            if buffer_size == 0 {
                return Err(PyValueError::new_err("buffer_size must be at least 1"));
            }
            let pattern = pattern.unwrap_or(DEFAULT_PATTERN);
            let splitter = Splitter::new(pattern).map_err(PyValueError::new_err)?;

            let mut counts = ChunkCounts::new();
            let mut batch: Vec<String> = Vec::with_capacity(buffer_size);
            let (mut chars_seen, mut items_seen) = (0u64, 0u64);
            let mut items = iterator.try_iter()?;
            loop {
                // Fill the batch under the GIL, then count it in parallel without the GIL.
                batch.clear();
                for item in items.by_ref().take(buffer_size) {
                    let item = item?;
                    let text = item.cast::<PyString>().map_err(|_| {
                        let type_name = item.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                        PyValueError::new_err(format!(
                            "train_from_iterator needs an iterator of str, item {items_seen} has type {type_name}"
                        ))
                    })?;
                    chars_seen += text.len()? as u64;
                    items_seen += 1;
                    batch.push(text.to_str()?.to_owned());
                }
                if batch.is_empty() {
                    break;
                }
                py.detach(|| count_batch(&splitter, &batch, &mut counts)).map_err(PyValueError::new_err)?;
                if batch.len() < buffer_size {
                    break;
                }
            }
            drop(batch);

            self.merges = py.detach(|| bpe::train(counts, vocab_size));
            self.pattern = pattern.to_string();
            self.chars_seen = chars_seen;
            Ok(chars_seen)
        }

        /// The split pattern used by the last training (the default before any).
        fn get_pattern(&self) -> String {
            self.pattern.clone()
        }

        /// Every token's bytes and rank: the 256 single bytes in byte order, then one per merge.
        fn get_mergeable_ranks<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, u32)> {
            bpe::token_bytes(&self.merges)
                .iter()
                .enumerate()
                .map(|(rank, bytes)| (PyBytes::new(py, bytes), rank as u32))
                .collect()
        }

        /// Characters of text seen by the last training.
        #[getter]
        fn chars_seen(&self) -> u64 {
            self.chars_seen
        }
    }

    #[pymodule]
    fn _rustbpe(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<Tokenizer>()?;
        m.add("DEFAULT_PATTERN", DEFAULT_PATTERN)?;
        Ok(())
    }
}
