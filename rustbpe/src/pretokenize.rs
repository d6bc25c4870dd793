//! Pre-tokenization: cut text into chunks with a regex before any merging, so that no token ever
//! spans two chunks (a word and the punctuation after it, or letters and digits, stay apart).
//!
//! Any fancy-regex pattern works. The GPT-4 pattern, which nanochat trains with, also has a hand-written
//! splitter that gives the same chunks about ten times faster: its character classes are read from the
//! Unicode tables of regex-syntax, the crate fancy-regex compiles `\p{L}`, `\p{N}` and `\s` with, and a
//! differential test below checks it against fancy-regex on random text.

use std::sync::OnceLock;

use fancy_regex::Regex;
use regex_syntax::hir::{Class, HirKind};

/// GPT-4's split pattern with numbers cut into groups of at most two digits, as nanochat uses it
/// (nanochat tokenizer.py@dfc8833; LOG 2026-01-13: `{1,2}` gave the best val bpb at d12).
pub const DEFAULT_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// The GPT-4 pattern with numbers cut into groups of at most `max_digits` digits (GPT-4 itself uses 3).
fn gpt4_pattern(max_digits: usize) -> String {
    DEFAULT_PATTERN.replace(r"\p{N}{1,2}", &format!(r"\p{{N}}{{1,{max_digits}}}"))
}

/// Cuts text into chunks: the hand-written GPT-4 splitter when the pattern is one of its variants,
/// fancy-regex otherwise.
pub struct Splitter {
    regex: Regex,
    gpt4_max_digits: Option<usize>,
}

impl Splitter {
    pub fn new(pattern: &str) -> Result<Self, String> {
        let regex = Regex::new(pattern).map_err(|e| format!("invalid regex pattern {pattern:?}: {e}"))?;
        let gpt4_max_digits = (1..=3).find(|&d| pattern == gpt4_pattern(d));
        if gpt4_max_digits.is_some() {
            char_classes(); // build the tables now, not inside the first parallel batch
        }
        Ok(Self { regex, gpt4_max_digits })
    }

    /// Calls `chunk` on each non-empty chunk of `text`, in order.
    pub fn split<'t>(&self, text: &'t str, mut chunk: impl FnMut(&'t str)) -> Result<(), String> {
        match self.gpt4_max_digits {
            Some(max_digits) => {
                let mut start = 0;
                while start < text.len() {
                    let end = gpt4_chunk_end(text.as_bytes(), start, max_digits);
                    chunk(&text[start..end]);
                    start = end;
                }
            }
            None => {
                for found in self.regex.find_iter(text) {
                    let found = found.map_err(|e| format!("regex failed while splitting text: {e}"))?;
                    if !found.as_str().is_empty() {
                        chunk(found.as_str());
                    }
                }
            }
        }
        Ok(())
    }
}

/// The three character classes of the GPT-4 pattern; every other character is `Other`.
/// They are disjoint: White_Space characters are separators or controls, never letters or numbers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum CharClass {
    Other,
    Letter, // \p{L}
    Number, // \p{N}
    Space,  // \s, Unicode White_Space
}

/// Class of every code point, as a two-level table: 4,352 blocks of 256 code points, identical blocks shared.
struct CharClasses {
    ascii: [CharClass; 128],
    block_page: Vec<u16>,
    pages: Vec<[CharClass; 256]>,
}

fn char_classes() -> &'static CharClasses {
    static TABLE: OnceLock<CharClasses> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut flat = vec![CharClass::Other; 0x110000];
        for (class, expr) in
            [(CharClass::Letter, r"\p{L}"), (CharClass::Number, r"\p{N}"), (CharClass::Space, r"\s")]
        {
            for (lo, hi) in unicode_ranges(expr) {
                flat[lo as usize..=hi as usize].fill(class);
            }
        }
        let mut pages: Vec<[CharClass; 256]> = Vec::new();
        let mut block_page = Vec::with_capacity(flat.len() / 256);
        for block in flat.chunks_exact(256) {
            let block: [CharClass; 256] = block.try_into().expect("256 entries");
            let page = pages.iter().position(|p| *p == block).unwrap_or_else(|| {
                pages.push(block);
                pages.len() - 1
            });
            block_page.push(page as u16);
        }
        let ascii = flat[..128].try_into().expect("128 entries");
        CharClasses { ascii, block_page, pages }
    })
}

/// Code point ranges of a Unicode class expression, exactly as regex-syntax (and so fancy-regex) defines it.
fn unicode_ranges(expr: &str) -> Vec<(char, char)> {
    let hir = regex_syntax::Parser::new().parse(expr).expect("a valid class expression");
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => {
            class.ranges().iter().map(|r| (r.start(), r.end())).collect()
        }
        other => panic!("{expr} is not a Unicode class: {other:?}"),
    }
}

impl CharClasses {
    /// Class and UTF-8 length of the character starting at byte `i` of valid UTF-8 `text`.
    #[inline(always)]
    fn at(&self, text: &[u8], i: usize) -> (CharClass, usize) {
        let b0 = text[i];
        if b0 < 0x80 {
            return (self.ascii[b0 as usize], 1);
        }
        let (cp, len) = if b0 < 0xE0 {
            (((b0 as u32 & 0x1F) << 6) | (text[i + 1] as u32 & 0x3F), 2)
        } else if b0 < 0xF0 {
            let cp =
                ((b0 as u32 & 0x0F) << 12) | ((text[i + 1] as u32 & 0x3F) << 6) | (text[i + 2] as u32 & 0x3F);
            (cp, 3)
        } else {
            let cp = ((b0 as u32 & 0x07) << 18)
                | ((text[i + 1] as u32 & 0x3F) << 12)
                | ((text[i + 2] as u32 & 0x3F) << 6)
                | (text[i + 3] as u32 & 0x3F);
            (cp, 4)
        };
        let page = self.block_page[(cp >> 8) as usize] as usize;
        (self.pages[page][(cp & 0xFF) as usize], len)
    }

    /// End of the run of `class` characters that starts at byte `i`.
    #[inline(always)]
    fn run_end(&self, text: &[u8], mut i: usize, class: CharClass) -> usize {
        while i < text.len() {
            let (c, len) = self.at(text, i);
            if c != class {
                break;
            }
            i += len;
        }
        i
    }
}

/// After an apostrophe at `i - 1`: the end of `(?i:[sdmt]|ll|ve|re)` starting at byte `i`, if it matches.
/// Case-insensitive matching is Unicode simple case folding, so `s` also matches U+017F LATIN SMALL LETTER
/// LONG S (checked against regex-syntax in the tests); no other letter here has a non-ASCII fold.
fn contraction_end(text: &[u8], i: usize) -> Option<usize> {
    let lower = |j: usize| text.get(j).map(|b| b.to_ascii_lowercase());
    match lower(i)? {
        b's' | b'd' | b'm' | b't' => Some(i + 1),
        0xC5 if text.get(i + 1) == Some(&0xBF) => Some(i + 2), // U+017F in UTF-8
        b'l' if lower(i + 1) == Some(b'l') => Some(i + 2),
        b'v' | b'r' if lower(i + 1) == Some(b'e') => Some(i + 2),
        _ => None,
    }
}

/// End (exclusive, in bytes) of the GPT-4 pattern's match that starts at byte `start` of `text`.
///
/// The pattern's alternatives are tried in order, with the same (possessive, greedy, backtracking)
/// semantics as the regex; between them they match every character, so the chunks tile the text.
fn gpt4_chunk_end(text: &[u8], start: usize, max_digits: usize) -> usize {
    use CharClass::*;
    let classes = char_classes();
    let n = text.len();
    let b0 = text[start];
    let (c0, len0) = classes.at(text, start);
    let after0 = start + len0;
    let c1 = (after0 < n).then(|| classes.at(text, after0));

    // '(?i:[sdmt]|ll|ve|re)
    if b0 == b'\'' {
        if let Some(end) = contraction_end(text, after0) {
            return end;
        }
    }
    // [^\r\n\p{L}\p{N}]?+\p{L}+
    if c0 == Letter {
        return classes.run_end(text, after0, Letter);
    }
    if c0 != Number && b0 != b'\r' && b0 != b'\n' {
        if let Some((Letter, len1)) = c1 {
            return classes.run_end(text, after0 + len1, Letter);
        }
    }
    // \p{N}{1,max_digits}
    if c0 == Number {
        let mut end = after0;
        for _ in 1..max_digits {
            match (end < n).then(|| classes.at(text, end)) {
                Some((Number, len)) => end += len,
                _ => break,
            }
        }
        return end;
    }
    // ' ?[^\s\p{L}\p{N}]++[\r\n]*'
    let others_from = match (c0, c1) {
        (Other, _) => Some(after0),
        (Space, Some((Other, len1))) if b0 == b' ' => Some(after0 + len1),
        _ => None,
    };
    if let Some(from) = others_from {
        let mut end = classes.run_end(text, from, Other);
        while end < n && (text[end] == b'\r' || text[end] == b'\n') {
            end += 1;
        }
        return end;
    }
    // Only whitespace is left. Take its maximal run [start, end), then:
    //   \s*[\r\n]   ends after the run's last CR or LF, if it has one;
    //   \s+(?!\S)   is the whole run at the end of the text, else the run minus its last character;
    //   \s+         is the whole run (a single whitespace character before non-whitespace).
    let (mut end, mut last_start, mut newline_end) = (start, start, None);
    while end < n {
        let (class, len) = classes.at(text, end);
        if class != Space {
            break;
        }
        if text[end] == b'\r' || text[end] == b'\n' {
            newline_end = Some(end + 1);
        }
        last_start = end;
        end += len;
    }
    match newline_end {
        Some(e) => e,
        None if end == n || last_start == start => end,
        None => last_start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn regex_chunks<'t>(regex: &Regex, text: &'t str) -> Vec<&'t str> {
        regex.find_iter(text).map(|m| m.unwrap().as_str()).collect()
    }

    fn fast_chunks<'t>(splitter: &Splitter, text: &'t str) -> Vec<&'t str> {
        let mut chunks = Vec::new();
        splitter.split(text, |c| chunks.push(c)).unwrap();
        chunks
    }

    #[test]
    fn default_pattern_is_the_two_digit_variant() {
        assert_eq!(gpt4_pattern(2), DEFAULT_PATTERN);
        assert_eq!(Splitter::new(DEFAULT_PATTERN).unwrap().gpt4_max_digits, Some(2));
        assert_eq!(Splitter::new(&gpt4_pattern(3)).unwrap().gpt4_max_digits, Some(3));
        assert_eq!(Splitter::new(r"\w+|\s+").unwrap().gpt4_max_digits, None);
    }

    #[test]
    fn contraction_letters_fold_as_regex_syntax_folds_them() {
        for (expr, expected) in
            [("(?i)[sdmt]", "DMSTdmstſ"), ("(?i)l", "Ll"), ("(?i)v", "Vv"), ("(?i)e", "Ee"), ("(?i)r", "Rr")]
        {
            let folded: String = unicode_ranges(expr).into_iter().flat_map(|(lo, hi)| lo..=hi).collect();
            assert_eq!(folded, expected, "{expr}");
        }
    }

    #[test]
    fn known_splits() {
        let splitter = Splitter::new(DEFAULT_PATTERN).unwrap();
        let text = "Hello world! It's 12345 o'clock...\n\n  indented\tTAB  end   ";
        let expected = [
            "Hello",
            " world",
            "!",
            " It",
            "'s",
            " ",
            "12",
            "34",
            "5",
            " o",
            "'clock",
            "...\n\n",
            " ",
            " indented",
            "\tTAB",
            " ",
            " end",
            "   ",
        ];
        assert_eq!(fast_chunks(&splitter, text), expected);
    }

    #[test]
    fn fast_splitter_matches_fancy_regex_on_random_text() {
        // Characters at every class boundary of the pattern: ASCII classes, apostrophes and contraction
        // letters (with their case folds), Unicode letters/marks/numbers, every kind of whitespace, emoji.
        let alphabet: Vec<char> = "aZsStTdmMlLvVeErRſK 'x0927\r\n\t\u{b}\u{c}\u{85}\u{a0}\u{1680}\u{2028}\u{3000}\u{1c}\u{1f}!?.,-_()#\"\\/\
             é\u{301}\u{308}ß中文字日本한국어Ωω١٢٣²½Ⅻ🙂🚀\u{1F3FD}\u{200d}\u{feff}\u{0}€$"
            .chars()
            .collect();
        let mut rng = Rng(0x9E3779B97F4A7C15);
        for max_digits in 1..=3 {
            let pattern = gpt4_pattern(max_digits);
            let splitter = Splitter::new(&pattern).unwrap();
            let regex = Regex::new(&pattern).unwrap();
            for _ in 0..4000 {
                let len = rng.below(40);
                let text: String = (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect();
                assert_eq!(fast_chunks(&splitter, &text), regex_chunks(&regex, &text), "text {text:?}");
            }
        }
    }

    #[test]
    fn fast_splitter_matches_fancy_regex_on_every_code_point_class() {
        // Each code point between letters, digits and spaces: exercises the whole class table.
        let splitter = Splitter::new(DEFAULT_PATTERN).unwrap();
        let regex = Regex::new(DEFAULT_PATTERN).unwrap();
        let all: Vec<char> = (0..=0x10FFFFu32).filter_map(char::from_u32).collect();
        for window in all.chunks(4096) {
            let text: String = window.iter().flat_map(|&c| [c, 'a', c, '1', c, ' ', c, c]).collect();
            assert_eq!(fast_chunks(&splitter, &text), regex_chunks(&regex, &text));
        }
    }

    #[test]
    fn custom_patterns_use_fancy_regex_and_skip_empty_matches() {
        let splitter = Splitter::new(r"\d*").unwrap();
        assert_eq!(fast_chunks(&splitter, "ab12c3"), ["12", "3"]);
        assert!(Splitter::new("(unclosed").err().unwrap().contains("invalid regex pattern"));
    }
}
