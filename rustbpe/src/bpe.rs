//! Byte-level BPE training on chunk counts.
//!
//! Every distinct chunk starts as its UTF-8 bytes (token ids 0..=255). Each step merges the most frequent
//! adjacent pair of tokens, counted over all chunks weighted by how often each chunk occurred, into a new
//! token 256, 257, ... Only the chunks that hold the merged pair are touched, and the pair counts are
//! updated by the difference, so a step costs the size of the pair's occurrence list, not the corpus.
//!
//! Choosing the pair: a max-heap of (count, pair) with lazy deletion. A pair's count can only fall after it
//! is pushed (new occurrences only ever arise for pairs holding the newest token, and those are pushed
//! fresh), so a heap entry is an upper bound of its live count. A popped entry whose count is stale is
//! pushed back with the live count; one whose count is live is the winner.
//!
//! Tie-break: among pairs with the same count, the smallest pair of token ids wins, comparing the left id
//! first, then the right id. This is the rule of karpathy/rustbpe too, so both produce identical merges.

use std::cmp::Ordering;

use dary_heap::OctonaryHeap;
use hashbrown::HashMap;
use rayon::prelude::*;

/// Two adjacent token ids, left then right.
pub type Pair = (u32, u32);

/// A pair as one integer; integer order is the tie-break order (left id, then right id).
type PairKey = u64;

#[inline(always)]
fn pair_key(left: u32, right: u32) -> PairKey {
    ((left as u64) << 32) | right as u64
}

fn pair_of(key: PairKey) -> Pair {
    ((key >> 32) as u32, key as u32)
}

/// The distinct chunks as token ids, back to back in one buffer; merging shrinks a chunk in place.
/// Chunks of a single byte hold no pair and are left out.
struct Words {
    ids: Vec<u32>,
    starts: Vec<usize>,
    lens: Vec<u32>,
    counts: Vec<u64>,
}

impl Words {
    fn new<B: AsRef<[u8]>>(chunks: impl IntoIterator<Item = (B, u64)>) -> Self {
        let mut words = Words { ids: Vec::new(), starts: Vec::new(), lens: Vec::new(), counts: Vec::new() };
        for (chunk, count) in chunks {
            let bytes = chunk.as_ref();
            if bytes.len() >= 2 && count > 0 {
                words.starts.push(words.ids.len());
                words.lens.push(bytes.len() as u32);
                words.counts.push(count);
                words.ids.extend(bytes.iter().map(|&b| b as u32));
            }
        }
        words
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    fn get(&self, w: usize) -> &[u32] {
        &self.ids[self.starts[w]..self.starts[w] + self.lens[w] as usize]
    }

    /// Replaces the non-overlapping occurrences of (a, b) in word `w`, leftmost first, by `z`, and reports how
    /// its adjacent pairs change: `removed` for each lost pair other than the occurrences of (a, b)
    /// themselves, `added` for each new pair (always one that holds `z`).
    #[inline(always)]
    fn merge(
        &mut self,
        w: usize,
        (a, b): Pair,
        z: u32,
        mut removed: impl FnMut(PairKey),
        mut added: impl FnMut(PairKey),
    ) {
        let n = self.lens[w] as usize;
        let ids = &mut self.ids[self.starts[w]..self.starts[w] + n];
        let (mut read, mut write) = (0, 0);
        while read < n {
            if ids[read] == a && read + 1 < n && ids[read + 1] == b {
                // ids[read - 1] is still the old token: writing only ever trails reading by a merge.
                if read > 0 {
                    removed(pair_key(ids[read - 1], a));
                    added(pair_key(ids[write - 1], z));
                }
                // The right neighbour's pair is handled here unless the next occurrence starts there,
                // in which case that occurrence's left side accounts for it.
                let next_merges = read + 3 < n && ids[read + 2] == a && ids[read + 3] == b;
                if read + 2 < n && !next_merges {
                    removed(pair_key(b, ids[read + 2]));
                    added(pair_key(z, ids[read + 2]));
                }
                ids[write] = z;
                read += 2;
            } else {
                ids[write] = ids[read];
                read += 1;
            }
            write += 1;
        }
        self.lens[w] = write as u32;
    }
}

/// A candidate merge in the heap: its count when pushed and every word it may occur in.
struct Job {
    count: u64,
    pair: PairKey,
    words: Vec<u32>,
}

impl Ord for Job {
    /// Higher count first; among equal counts the smaller pair (see the tie-break rule above).
    fn cmp(&self, other: &Self) -> Ordering {
        self.count.cmp(&other.count).then_with(|| other.pair.cmp(&self.pair))
    }
}

impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Job {}

/// Count of every adjacent pair over all words, and the ascending list of words that hold it (in parallel).
fn count_pairs(words: &Words) -> HashMap<PairKey, (u64, Vec<u32>)> {
    let min_words_per_task = words.len() / (8 * rayon::current_num_threads()) + 1;
    (0..words.len())
        .into_par_iter()
        .with_min_len(min_words_per_task)
        .fold(HashMap::new, |mut pairs: HashMap<PairKey, (u64, Vec<u32>)>, w| {
            let count = words.counts[w];
            for window in words.get(w).windows(2) {
                let (total, holders) = pairs.entry(pair_key(window[0], window[1])).or_default();
                *total += count;
                if holders.last() != Some(&(w as u32)) {
                    holders.push(w as u32);
                }
            }
            pairs
        })
        .reduce(HashMap::new, |mut left, right| {
            for (pair, (count, holders)) in right {
                let (total, all) = left.entry(pair).or_default();
                *total += count;
                all.extend(holders);
            }
            left
        })
}

/// Learns `vocab_size - 256` merges from chunks and their counts; fewer if the pairs run out first.
/// Merge `i` (0-based) creates token `256 + i` from the pair it returns.
pub fn train<B: AsRef<[u8]>>(chunks: impl IntoIterator<Item = (B, u64)>, vocab_size: u32) -> Vec<Pair> {
    let mut words = Words::new(chunks);
    let num_merges = vocab_size.saturating_sub(256) as usize;

    let mut pair_counts: HashMap<PairKey, u64> = HashMap::new();
    let mut jobs = Vec::new();
    for (pair, (count, holders)) in count_pairs(&words) {
        pair_counts.insert(pair, count);
        jobs.push(Job { count, pair, words: holders });
    }
    let mut heap = OctonaryHeap::from(jobs);

    let mut merges = Vec::with_capacity(num_merges);
    // the pairs each merge creates; drained after every merge, kept allocated
    let mut fresh: HashMap<PairKey, (u64, Vec<u32>)> = HashMap::new();
    while merges.len() < num_merges {
        let Some(mut job) = heap.pop() else { break };
        let live = pair_counts.get(&job.pair).copied().unwrap_or(0);
        if live == 0 {
            continue;
        }
        if live != job.count {
            job.count = live;
            heap.push(job);
            continue;
        }
        let pair = pair_of(job.pair);
        let new_id = 256 + merges.len() as u32;
        merges.push(pair);

        for &w in &job.words {
            let count = words.counts[w as usize];
            let removed = |old: PairKey| {
                let left = pair_counts.get_mut(&old).expect("a removed pair was counted");
                *left -= count;
                if *left == 0 {
                    pair_counts.remove(&old);
                }
            };
            let added = |new: PairKey| {
                let (total, holders) = fresh.entry(new).or_default();
                *total += count;
                if holders.last() != Some(&w) {
                    holders.push(w);
                }
            };
            words.merge(w as usize, pair, new_id, removed, added);
        }
        // Every occurrence of the pair is gone now (a leftmost-first pass leaves no adjacent a, b).
        pair_counts.remove(&job.pair);
        for (pair, (count, holders)) in fresh.drain() {
            pair_counts.insert(pair, count);
            heap.push(Job { count, pair, words: holders });
        }
    }
    merges
}

/// The bytes of every token: 0..=255 are the single bytes, then one token per merge.
pub fn token_bytes(merges: &[Pair]) -> Vec<Vec<u8>> {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for &(left, right) in merges {
        let merged = [tokens[left as usize].as_slice(), tokens[right as usize].as_slice()].concat();
        tokens.push(merged);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;
    use std::collections::BTreeMap;

    /// Textbook BPE: recount every pair from scratch at each step and merge the best one, using the
    /// same tie-break (highest count, then smallest (left, right)).
    fn naive_train(chunks: &[(&[u8], u64)], vocab_size: u32) -> Vec<Pair> {
        let mut words: Vec<(Vec<u32>, u64)> =
            chunks.iter().map(|(bytes, n)| (bytes.iter().map(|&b| b as u32).collect(), *n)).collect();
        let mut merges = Vec::new();
        while 256 + (merges.len() as u32) < vocab_size {
            let mut counts: BTreeMap<Pair, u64> = BTreeMap::new();
            for (ids, n) in &words {
                for w in ids.windows(2) {
                    *counts.entry((w[0], w[1])).or_default() += n;
                }
            }
            let Some((&best, _)) = counts.iter().max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0))) else {
                break;
            };
            let z = 256 + merges.len() as u32;
            for (ids, _) in &mut words {
                let mut out = Vec::with_capacity(ids.len());
                let mut i = 0;
                while i < ids.len() {
                    if i + 1 < ids.len() && (ids[i], ids[i + 1]) == best {
                        out.push(z);
                        i += 2;
                    } else {
                        out.push(ids[i]);
                        i += 1;
                    }
                }
                *ids = out;
            }
            merges.push(best);
        }
        merges
    }

    #[test]
    fn textbook_example() {
        // Wikipedia's "aaabdaaabac": aa occurs 4 times -> 256, leaving [aa a b d aa a b a c] where
        // (aa, a) and (a, b) tie at 2 and the smaller pair (97, 98) wins; then (aa, ab) -> "aaab".
        let merges = train([("aaabdaaabac", 1)], 259);
        assert_eq!(merges, vec![(97, 97), (97, 98), (256, 257)]);
        assert_eq!(token_bytes(&merges)[258], b"aaab");
    }

    #[test]
    fn stops_when_pairs_run_out_and_honours_vocab_256() {
        assert_eq!(train([("ab", 5)], 256), vec![]);
        assert_eq!(train([("abc", 1), ("x", 9)], 1000), vec![(97, 98), (256, 99)]);
        assert!(train(Vec::<(&str, u64)>::new(), 300).is_empty());
    }

    #[test]
    fn runs_of_one_byte_merge_leftmost_first() {
        // "aaaaa" -> [aa aa a]; (aa, aa) and (aa, a) tie at 1 and (256, 97) is smaller -> [aa aaa] -> "aaaaa"
        let merges = train([("aaaaa", 1)], 1000);
        assert_eq!(merges, vec![(97, 97), (256, 97), (256, 257)]);
    }

    #[test]
    fn incremental_updates_match_full_recount() {
        let mut rng = Rng(42);
        for round in 0..300 {
            // Small alphabets make long repeats, overlaps (aaa) and many ties.
            let alphabet = 2 + round % 5;
            let chunks: Vec<(Vec<u8>, u64)> = (0..1 + rng.below(30))
                .map(|_| {
                    let len = 1 + rng.below(12);
                    let bytes = (0..len).map(|_| b'a' + rng.below(alphabet) as u8).collect();
                    (bytes, 1 + rng.below(5) as u64)
                })
                .collect();
            let as_refs: Vec<(&[u8], u64)> = chunks.iter().map(|(b, n)| (b.as_slice(), *n)).collect();
            let vocab_size = 256 + rng.below(40) as u32;
            assert_eq!(train(as_refs.clone(), vocab_size), naive_train(&as_refs, vocab_size), "{chunks:?}");
        }
    }

    #[test]
    fn merge_reports_exactly_the_change_in_pairs() {
        let mut rng = Rng(7);
        for _ in 0..2000 {
            let ids: Vec<u8> = (0..rng.below(10)).map(|_| rng.below(3) as u8).collect();
            let mut words = Words::new([(ids.clone(), 1)]);
            if words.len() == 0 {
                continue;
            }
            let pair = (rng.below(3) as u32, rng.below(3) as u32);
            let pairs_of = |ids: &[u32]| -> BTreeMap<Pair, i64> {
                let mut m = BTreeMap::new();
                for w in ids.windows(2) {
                    *m.entry((w[0], w[1])).or_default() += 1;
                }
                m
            };
            let mut expected = pairs_of(words.get(0));
            let mut delta: BTreeMap<Pair, i64> = BTreeMap::new();
            let mut reported = delta.clone();
            words.merge(
                0,
                pair,
                9,
                |p| *reported.entry(pair_of(p)).or_default() -= 1,
                |p| *delta.entry(pair_of(p)).or_default() += 1,
            );
            for (p, d) in delta {
                *reported.entry(p).or_default() += d;
            }
            // apply the reported change, then drop the merged pair, which the caller zeroes
            for (p, d) in reported {
                *expected.entry(p).or_default() += d;
            }
            expected.remove(&pair);
            expected.retain(|_, n| *n != 0);
            assert_eq!(expected, pairs_of(words.get(0)), "{ids:?} merging {pair:?}");
        }
    }
}
