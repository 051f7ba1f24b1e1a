//! Transactions: an overlay of the nodes a transaction changed, over the live tree, and the
//! generations of every node it looked at. Commit fails with `EAGAIN` if any of those nodes
//! changed meanwhile (the per-node conflict detection of xenstored since Xen 4.9).

use std::collections::{BTreeMap, HashMap};

use xen_abi::DomId;
use xen_store::XsErrno;

use super::tree::{Change, Node, Nodes, Tree};

/// An open transaction.
#[derive(Debug, Default)]
pub struct Transaction {
    /// Nodes written or removed (`None`) by the transaction.
    overlay: BTreeMap<String, Option<Node>>,
    /// Generation of each node as first seen (`None`: absent).
    seen: HashMap<String, Option<u64>>,
    /// Ownership changes, for quota accounting inside the transaction.
    owned_delta: HashMap<DomId, isize>,
    /// Watch firings to deliver if the commit succeeds.
    pub changes: Vec<Change>,
}

/// The view a transaction's operations run against.
pub struct TxView<'a> {
    /// The live tree.
    pub live: &'a Tree,
    /// The transaction.
    pub tx: &'a mut Transaction,
}

impl TxView<'_> {
    fn current(&mut self, path: &str) -> Option<Node> {
        if let Some(entry) = self.tx.overlay.get(path) {
            return entry.clone();
        }
        let node = self.live.peek(path).cloned();
        self.tx
            .seen
            .entry(path.to_string())
            .or_insert(node.as_ref().map(|n| n.generation));
        node
    }

    fn adjust_owner(&mut self, domid: DomId, delta: isize) {
        *self.tx.owned_delta.entry(domid).or_default() += delta;
    }
}

impl Nodes for TxView<'_> {
    fn get(&mut self, path: &str) -> Option<Node> {
        self.current(path)
    }

    fn put(&mut self, path: &str, node: Node) {
        if let Some(old) = self.current(path) {
            self.adjust_owner(old.owner(), -1);
        }
        self.adjust_owner(node.owner(), 1);
        self.tx.overlay.insert(path.to_string(), Some(node));
    }

    fn remove(&mut self, path: &str) {
        if let Some(old) = self.current(path) {
            self.adjust_owner(old.owner(), -1);
        }
        self.tx.overlay.insert(path.to_string(), None);
    }

    fn owned_by(&self, domid: DomId) -> usize {
        let live = self.live.owned_by(domid) as isize;
        (live + self.tx.owned_delta.get(&domid).copied().unwrap_or(0)).max(0) as usize
    }
}

impl Transaction {
    /// Applies the transaction to the live tree, or fails with `EAGAIN` on a conflict.
    pub fn commit(self, live: &mut Tree) -> Result<Vec<Change>, XsErrno> {
        if self
            .seen
            .iter()
            .any(|(path, generation)| live.generation_of(path) != *generation)
        {
            return Err(XsErrno::EAGAIN);
        }
        for (path, node) in self.overlay {
            match node {
                Some(n) => live.put(&path, n),
                None => live.remove(&path),
            }
        }
        Ok(self.changes)
    }
}
