//! Text rendering scores (Table 8), as AnyText's evaluation defines them: sentence accuracy is
//! whether the recognised text equals the target exactly, and the normalised edit distance
//! (NED) is 1 − Levenshtein(recognised, target) / max(len) over characters (higher is better;
//! two empty strings score 1).

/// Whether `recognized` is exactly `target` (surrounding whitespace ignored).
pub fn sentence_accuracy(recognized: &str, target: &str) -> f64 {
    f64::from(u8::from(recognized.trim() == target.trim()))
}

/// 1 − the Levenshtein distance over characters divided by the longer length.
pub fn normalized_edit_similarity(recognized: &str, target: &str) -> f64 {
    let a: Vec<char> = recognized.trim().chars().collect();
    let b: Vec<char> = target.trim().chars().collect();
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 1.0;
    }
    1.0 - levenshtein(&a, &b) as f64 / longest as f64
}

/// Edit distance (insertions, deletions, substitutions, each costing 1).
fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_of_known_pairs() {
        let c = |s: &str| s.chars().collect::<Vec<_>>();
        assert_eq!(levenshtein(&c("kitten"), &c("sitting")), 3);
        assert_eq!(levenshtein(&c(""), &c("abc")), 3);
        assert_eq!(levenshtein(&c("flaw"), &c("lawn")), 2);
        assert_eq!(levenshtein(&c("日本語"), &c("日本")), 1);
    }

    #[test]
    fn scores_of_known_pairs() {
        assert_eq!(sentence_accuracy(" OPEN ", "OPEN"), 1.0);
        assert_eq!(sentence_accuracy("0PEN", "OPEN"), 0.0);
        assert!(
            (normalized_edit_similarity("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-12
        );
        assert_eq!(normalized_edit_similarity("", ""), 1.0);
        assert_eq!(normalized_edit_similarity("abc", ""), 0.0);
    }
}
