//! The node tree of the simulated xenstored, and the operations on it with xenstored's
//! permission, quota and watch-firing rules.
//!
//! Operations run against a [`Nodes`] view: the live tree, or a transaction's overlay over it
//! (see `txn.rs`). Every node carries a generation number; a transaction records the generation
//! of each node it touched and fails with `EAGAIN` at commit if any of them moved.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use xen_abi::DomId;
use xen_store::perms::{access, Perm, PermKind};
use xen_store::XsErrno;

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its value.
    pub value: Vec<u8>,
    /// Owner-first permissions.
    pub perms: Vec<Perm>,
    /// Names of its children.
    pub children: BTreeSet<String>,
    /// Bumped on every change; transactions compare it at commit.
    pub generation: u64,
}

impl Node {
    /// The owner (first permission entry).
    pub fn owner(&self) -> DomId {
        self.perms.first().map_or(0, |p| p.domid)
    }
}

/// Per-domain limits (unprivileged domains only; dom0 is exempt as in xenstored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own.
    pub nodes: usize,
    /// Bytes in one node's value.
    pub node_size: usize,
    /// Watches per connection.
    pub watches: usize,
    /// Open transactions per connection.
    pub transactions: usize,
    /// Permission entries on one node.
    pub permissions: usize,
}

impl Default for Quotas {
    /// xenstored's defaults.
    fn default() -> Self {
        Self {
            nodes: 1000,
            node_size: 2048,
            watches: 128,
            transactions: 10,
            permissions: 5,
        }
    }
}

/// Who is asking: a connection's domain, and the domain it may act for (`SET_TARGET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The connection's domain.
    pub domid: DomId,
    /// The target domain granted by `XS_SET_TARGET`, if any.
    pub target: Option<DomId>,
}

impl Caller {
    /// Whether this is dom0 (privileged: all access, no quotas).
    pub fn privileged(&self) -> bool {
        self.domid == 0
    }

    /// The access the caller has to a node with `perms`.
    pub fn access(&self, perms: &[Perm]) -> PermKind {
        if self.privileged() {
            return PermKind::Both;
        }
        if let (Some(t), Some(first)) = (self.target, perms.first()) {
            if first.domid == t {
                return PermKind::Both;
            }
        }
        access(perms, self.domid)
    }
}

/// A change that fires watches: the path, and whether only exact watches match (nodes
/// removed below a removed node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The changed node.
    pub path: String,
    /// Only watches on exactly this path fire.
    pub exact: bool,
    /// The node's permissions (before removal, for removed nodes): watchers must be able to
    /// read it to be told.
    pub perms: Vec<Perm>,
}

/// Read and write access to nodes, as the live tree or a transaction sees them.
pub trait Nodes {
    /// The node at an absolute path.
    fn get(&mut self, path: &str) -> Option<Node>;
    /// Stores a node (its generation is assigned by the implementation).
    fn put(&mut self, path: &str, node: Node);
    /// Removes one node (not its children).
    fn remove(&mut self, path: &str);
    /// Nodes owned by `domid`, as this view sees them.
    fn owned_by(&self, domid: DomId) -> usize;
}

/// The live tree.
#[derive(Debug)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
    owned: HashMap<DomId, usize>,
    generation: u64,
}

impl Default for Tree {
    fn default() -> Self {
        let mut tree = Self {
            nodes: BTreeMap::new(),
            owned: HashMap::new(),
            generation: 0,
        };
        let root_perms = vec![Perm::new(0, PermKind::None)];
        for path in [
            "/",
            "/local",
            "/local/domain",
            "/tool",
            "@introduceDomain",
            "@releaseDomain",
        ] {
            let node = Node {
                value: Vec::new(),
                perms: root_perms.clone(),
                children: BTreeSet::new(),
                generation: 0,
            };
            tree.put(path, node);
        }
        for (parent, child) in [("/", "local"), ("/", "tool"), ("/local", "domain")] {
            if let Some(n) = tree.nodes.get_mut(parent) {
                n.children.insert(child.to_string());
            }
        }
        tree
    }
}

impl Tree {
    /// The generation a node has now (`None` if absent).
    pub fn generation_of(&self, path: &str) -> Option<u64> {
        self.nodes.get(path).map(|n| n.generation)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is empty (never: the root always exists).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A node, without access checks (for the daemon's own use).
    pub fn peek(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }
}

impl Nodes for Tree {
    fn get(&mut self, path: &str) -> Option<Node> {
        self.nodes.get(path).cloned()
    }

    fn put(&mut self, path: &str, mut node: Node) {
        node.generation = self.next_generation();
        let new_owner = node.owner();
        if let Some(old) = self.nodes.insert(path.to_string(), node) {
            if let Some(c) = self.owned.get_mut(&old.owner()) {
                *c = c.saturating_sub(1);
            }
        }
        *self.owned.entry(new_owner).or_default() += 1;
    }

    fn remove(&mut self, path: &str) {
        if let Some(old) = self.nodes.remove(path) {
            if let Some(c) = self.owned.get_mut(&old.owner()) {
                *c = c.saturating_sub(1);
            }
        }
    }

    fn owned_by(&self, domid: DomId) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }
}

/// The parent of an absolute path (`None` for the root).
pub fn parent_of(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => path.get(..i),
        None => None,
    }
}

/// The last component of a path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// `XS_READ`.
pub fn read(nodes: &mut impl Nodes, caller: Caller, path: &str) -> Result<Vec<u8>, XsErrno> {
    let node = nodes.get(path).ok_or(XsErrno::ENOENT)?;
    if !caller.access(&node.perms).can_read() {
        return Err(XsErrno::EACCES);
    }
    Ok(node.value)
}

/// `XS_DIRECTORY`.
pub fn directory(
    nodes: &mut impl Nodes,
    caller: Caller,
    path: &str,
) -> Result<Vec<String>, XsErrno> {
    let node = nodes.get(path).ok_or(XsErrno::ENOENT)?;
    if !caller.access(&node.perms).can_read() {
        return Err(XsErrno::EACCES);
    }
    Ok(node.children.into_iter().collect())
}

/// `XS_GET_PERMS`.
pub fn get_perms(nodes: &mut impl Nodes, caller: Caller, path: &str) -> Result<Vec<Perm>, XsErrno> {
    let node = nodes.get(path).ok_or(XsErrno::ENOENT)?;
    if !caller.access(&node.perms).can_read() {
        return Err(XsErrno::EACCES);
    }
    Ok(node.perms)
}

/// Creates `path` and any missing ancestors, as xenstored's `construct_node` does: the closest
/// existing ancestor must be writable by the caller; new nodes inherit their parent's
/// permissions, and an unprivileged creator owns what it creates. Implicitly created ancestors
/// fire no watches of their own (a watch on an ancestor hears about `path`, below it). The walk
/// is iterative: a domain chooses the depth.
fn create(
    nodes: &mut impl Nodes,
    caller: Caller,
    quotas: &Quotas,
    path: &str,
    value: Vec<u8>,
    changes: &mut Vec<Change>,
) -> Result<(), XsErrno> {
    let mut missing = vec![path];
    let mut parent_path = parent_of(path).ok_or(XsErrno::EINVAL)?;
    let mut parent = loop {
        match nodes.get(parent_path) {
            Some(p) => break p,
            None => {
                missing.push(parent_path);
                parent_path = parent_of(parent_path).ok_or(XsErrno::EINVAL)?;
            }
        }
    };
    if !caller.access(&parent.perms).can_write() {
        return Err(XsErrno::EACCES);
    }
    if !caller.privileged() && nodes.owned_by(caller.domid) + missing.len() > quotas.nodes {
        return Err(XsErrno::ENOSPC);
    }
    let mut value = Some(value);
    while let Some(child) = missing.pop() {
        let mut perms = parent.perms.clone();
        if !caller.privileged() {
            if let Some(first) = perms.first_mut() {
                first.domid = caller.domid;
            }
        }
        parent.children.insert(basename(child).to_string());
        nodes.put(parent_path, parent);
        let node_value = if missing.is_empty() {
            value.take().unwrap_or_default()
        } else {
            Vec::new()
        };
        let node = Node {
            value: node_value,
            perms: perms.clone(),
            children: BTreeSet::new(),
            generation: 0,
        };
        nodes.put(child, node.clone());
        if missing.is_empty() {
            changes.push(Change {
                path: child.to_string(),
                exact: false,
                perms,
            });
        }
        parent_path = child;
        parent = node;
    }
    Ok(())
}

/// `XS_WRITE`.
pub fn write(
    nodes: &mut impl Nodes,
    caller: Caller,
    quotas: &Quotas,
    path: &str,
    value: &[u8],
    changes: &mut Vec<Change>,
) -> Result<(), XsErrno> {
    if !caller.privileged() && value.len() > quotas.node_size {
        return Err(XsErrno::ENOSPC);
    }
    match nodes.get(path) {
        Some(mut node) => {
            if !caller.access(&node.perms).can_write() {
                return Err(XsErrno::EACCES);
            }
            node.value = value.to_vec();
            changes.push(Change {
                path: path.to_string(),
                exact: false,
                perms: node.perms.clone(),
            });
            nodes.put(path, node);
            Ok(())
        }
        None => create(nodes, caller, quotas, path, value.to_vec(), changes),
    }
}

/// `XS_MKDIR`: creates the node if missing; an existing node is left alone.
pub fn mkdir(
    nodes: &mut impl Nodes,
    caller: Caller,
    quotas: &Quotas,
    path: &str,
    changes: &mut Vec<Change>,
) -> Result<(), XsErrno> {
    match nodes.get(path) {
        Some(node) if caller.access(&node.perms).can_write() => Ok(()),
        Some(_) => Err(XsErrno::EACCES),
        None => create(nodes, caller, quotas, path, Vec::new(), changes),
    }
}

/// `XS_RM`: removes a node and its subtree. Removing a missing child of an existing node
/// succeeds, as in xenstored.
pub fn rm(
    nodes: &mut impl Nodes,
    caller: Caller,
    path: &str,
    changes: &mut Vec<Change>,
) -> Result<(), XsErrno> {
    if path == "/" {
        return Err(XsErrno::EINVAL);
    }
    let Some(node) = nodes.get(path) else {
        let parent_exists = parent_of(path).is_some_and(|p| nodes.get(p).is_some());
        return if parent_exists {
            Ok(())
        } else {
            Err(XsErrno::ENOENT)
        };
    };
    if !caller.access(&node.perms).can_write() {
        return Err(XsErrno::EACCES);
    }
    let parent_path = parent_of(path).ok_or(XsErrno::EINVAL)?;
    let mut parent = nodes.get(parent_path).ok_or(XsErrno::EIO)?;
    remove_subtree(nodes, path, node.clone(), changes);
    parent.children.remove(basename(path));
    nodes.put(parent_path, parent);
    changes.push(Change {
        path: path.to_string(),
        exact: false,
        perms: node.perms,
    });
    Ok(())
}

fn remove_subtree(nodes: &mut impl Nodes, path: &str, node: Node, changes: &mut Vec<Change>) {
    // Iterative walk: a hostile domain can build deep trees, and recursion must not follow it.
    let mut stack = vec![(path.to_string(), node)];
    while let Some((p, n)) = stack.pop() {
        for name in &n.children {
            let cp = child_path(&p, name);
            if let Some(child) = nodes.get(&cp) {
                changes.push(Change {
                    path: cp.clone(),
                    exact: true,
                    perms: child.perms.clone(),
                });
                stack.push((cp, child));
            }
        }
        nodes.remove(&p);
    }
}

/// `XS_SET_PERMS`: only the owner (or dom0) may change permissions; an unprivileged caller
/// cannot give the node away.
pub fn set_perms(
    nodes: &mut impl Nodes,
    caller: Caller,
    quotas: &Quotas,
    path: &str,
    perms: Vec<Perm>,
    changes: &mut Vec<Change>,
) -> Result<(), XsErrno> {
    if perms.is_empty() {
        return Err(XsErrno::EINVAL);
    }
    if !caller.privileged() && perms.len() > quotas.permissions {
        return Err(XsErrno::ENOSPC);
    }
    let mut node = nodes.get(path).ok_or(XsErrno::ENOENT)?;
    let owns = caller.privileged()
        || node.owner() == caller.domid
        || caller.target.is_some_and(|t| node.owner() == t);
    if !owns || !caller.access(&node.perms).can_write() {
        return Err(XsErrno::EACCES);
    }
    let new_owner = perms.first().map_or(0, |p| p.domid);
    if !caller.privileged() && new_owner != node.owner() {
        return Err(XsErrno::EPERM);
    }
    node.perms = perms;
    changes.push(Change {
        path: path.to_string(),
        exact: false,
        perms: node.perms.clone(),
    });
    nodes.put(path, node);
    Ok(())
}
