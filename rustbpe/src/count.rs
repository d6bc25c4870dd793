//! Counting distinct chunks: the corpus streams through in batches and only the counts stay.

use compact_str::CompactString;
use hashbrown::HashMap;
use rayon::prelude::*;

use crate::pretokenize::Splitter;

/// How often each distinct chunk occurred in the text seen so far.
pub type ChunkCounts = HashMap<CompactString, u64>;

/// Splits every text of `batch` (in parallel) and adds the number of times each chunk occurs to `counts`.
pub fn count_batch(splitter: &Splitter, batch: &[String], counts: &mut ChunkCounts) -> Result<(), String> {
    // Each worker counts into its own map of borrowed slices (no allocation per chunk); the maps are
    // then folded together, and only chunks new to `counts` are copied.
    let batch_counts = batch
        .par_iter()
        .try_fold(HashMap::<&str, u64>::new, |mut local, text| {
            splitter.split(text, |chunk| *local.entry(chunk).or_insert(0) += 1)?;
            Ok::<_, String>(local)
        })
        .try_reduce(HashMap::new, |a, b| {
            let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            for (chunk, n) in small {
                *big.entry(chunk).or_insert(0) += n;
            }
            Ok(big)
        })?;
    counts.reserve(batch_counts.len() / 4);
    for (chunk, n) in batch_counts {
        *counts.entry_ref(chunk).or_insert(0) += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accumulate_across_batches() {
        let splitter = Splitter::new(r"\S+|\s+").unwrap();
        let mut counts = ChunkCounts::new();
        count_batch(&splitter, &["a b a".to_string(), "b".to_string()], &mut counts).unwrap();
        count_batch(&splitter, &["a  c".to_string()], &mut counts).unwrap();
        let mut got: Vec<(String, u64)> = counts.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        got.sort();
        let expected = [(" ", 2), ("  ", 1), ("a", 3), ("b", 2), ("c", 1)];
        assert_eq!(got, expected.map(|(k, v)| (k.to_string(), v)));
    }
}
