//! Disjoint sets (union-find with path halving and union by size), the second level of the
//! paper's hierarchical aggregation: items linked by a chain of similar pairs form one set.

/// A partition of `0..n` into disjoint sets.
#[derive(Debug, Clone)]
pub struct DisjointSets {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl DisjointSets {
    /// `n` singletons.
    pub fn new(n: usize) -> Self {
        DisjointSets {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    /// The representative of `x`'s set.
    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grand = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grand;
            x = grand;
        }
        x
    }

    /// Merges the sets of `a` and `b`.
    pub fn union(&mut self, a: u32, b: u32) {
        let (mut ra, mut rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        if self.size[ra as usize] < self.size[rb as usize] {
            std::mem::swap(&mut ra, &mut rb);
        }
        self.parent[rb as usize] = ra;
        self.size[ra as usize] += self.size[rb as usize];
    }

    /// The sets with at least `min_size` members, each sorted, ordered by their first member.
    pub fn sets(&mut self, min_size: usize) -> Vec<Vec<u32>> {
        let n = self.parent.len();
        let mut by_root: std::collections::HashMap<u32, Vec<u32>> = Default::default();
        for x in 0..n as u32 {
            let r = self.find(x);
            if self.size[r as usize] as usize >= min_size {
                by_root.entry(r).or_default().push(x);
            }
        }
        let mut sets: Vec<Vec<u32>> = by_root.into_values().collect();
        sets.sort_unstable_by_key(|s| s[0]);
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_merge_and_singletons_are_left_out() {
        let mut d = DisjointSets::new(7);
        d.union(0, 3);
        d.union(3, 5);
        d.union(6, 2);
        d.union(5, 0);
        assert_eq!(d.sets(2), vec![vec![0, 3, 5], vec![2, 6]]);
        assert_eq!(d.sets(1).len(), 4);
        assert_eq!(d.find(5), d.find(0));
        assert_ne!(d.find(1), d.find(0));
    }
}
