use xen_grant::{GrantAllocator, GrantedPages};
use xen_sim::SimDomain;

use super::*;

fn segment(gref: GrantRef) -> Segment {
    Segment {
        gref,
        first_sect: 0,
        last_sect: 7,
    }
}

type Cache = GrantCache<xen_sim::domain::SimGrants>;

/// What a test keeps alive: the host, the granted pages and the cache over them.
struct Rig {
    _dir: tempfile::TempDir,
    _host: xen_sim::Host,
    _pages: xen_sim::domain::SimGrantedPages,
    refs: Vec<GrantRef>,
    stats: Arc<QueueStats>,
    cache: Cache,
}

/// A guest that granted `pages` pages to a driver domain whose cache holds `max` grants.
async fn rig(pages: usize, max: usize) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let host = xen_sim::Host::start(dir.path()).await.unwrap();
    let dd = SimDomain::new(host.create_domain("dd", 64).unwrap());
    let guest = SimDomain::new(host.create_domain("guest", 1024).unwrap());
    let granted = guest
        .grants()
        .unwrap()
        .grant_pages(dd.domid(), pages, true)
        .unwrap();
    let stats = Arc::new(QueueStats::default());
    let cache = GrantCache::new(
        Arc::new(dd.grants().unwrap()),
        guest.domid(),
        true,
        max,
        Arc::clone(&stats),
    );
    Rig {
        refs: granted.refs().to_vec(),
        _dir: dir,
        _host: host,
        _pages: granted,
        stats,
        cache,
    }
}

/// A frontend cycling through twice as many grants as the cache holds, in requests of 8
/// pages, as deep queues of large requests do: the grants that made it into the cache keep
/// hitting (Linux's policy), where evicting on every miss would throw out exactly the grants
/// needed next and never hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_set_larger_than_the_cache_keeps_hitting_on_what_stays_cached() {
    // The host, its domains and the granted pages live as long as the bindings.
    let Rig {
        refs,
        stats,
        mut cache,
        _dir,
        _host,
        _pages,
    } = rig(64, 32).await;
    for _round in 0..10 {
        for request in refs.chunks(8) {
            let segments: Vec<Segment> = request.iter().copied().map(segment).collect();
            let (iovecs, held) = cache.map(&segments, true).unwrap();
            assert_eq!(iovecs.len(), 8);
            cache.release(held);
            assert!(cache.entries.len() <= 32);
        }
    }
    let s = stats.snapshot();
    assert_eq!(s.persistent_grants, 32, "the cache filled up");
    assert_eq!(s.grant_hits + s.grants_mapped, 640);
    // Rounds 2-10: the 32 cached grants hit every time (one purge may happen at most, as the
    // test runs for far less than the purge interval).
    assert!(s.grant_hits >= 9 * 32 - 8, "{s:?}");
}

/// Grants in use by a request in flight are never purged, and an idle full cache is purged
/// (least recently used first) once the interval has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_purges_its_least_recently_used_idle_grants_after_the_interval() {
    let Rig {
        refs,
        mut cache,
        _dir,
        _host,
        _pages,
        ..
    } = rig(30, 20).await;
    let map = |cache: &mut Cache, grants: &[GrantRef]| {
        let segments: Vec<Segment> = grants.iter().copied().map(segment).collect();
        cache.map(&segments, true).unwrap().1
    };
    // 10 held in flight, 10 idle (the first 5 of them least recently used).
    let busy = map(&mut cache, &refs[0..10]);
    let idle = map(&mut cache, &refs[10..20]);
    cache.release(idle);
    let again = map(&mut cache, &refs[15..20]);
    cache.release(again);
    assert_eq!(cache.entries.len(), 20);
    // Full: 5 newcomers purge the excess, least recently used idle first.
    let newcomers = map(&mut cache, &refs[20..25]);
    cache.release(newcomers);
    for gref in &refs[0..10] {
        assert!(cache.entries.contains_key(gref), "in flight: kept");
    }
    for gref in &refs[10..15] {
        assert!(
            !cache.entries.contains_key(gref),
            "least recently used: purged"
        );
    }
    for gref in &refs[15..25] {
        assert!(cache.entries.contains_key(gref));
    }
    // Full again, and within the interval: the next newcomers are mapped for their request only.
    let more = map(&mut cache, &refs[25..30]);
    assert_eq!(cache.entries.len(), 20);
    for gref in &refs[25..30] {
        assert!(!cache.entries.contains_key(gref));
    }
    drop(more);
    std::thread::sleep(PURGE_INTERVAL);
    let later = map(&mut cache, &refs[25..30]);
    cache.release(later);
    for gref in &refs[25..30] {
        assert!(
            cache.entries.contains_key(gref),
            "after the interval they fit"
        );
    }
    cache.release(busy);
}

/// Misses are mapped in grant-reference order (so consecutive frames map in one piece), which
/// is not the order of the request's segments: each segment must still point at its own page,
/// whether the batch goes into the cache or serves this request only, with a grant that
/// appears twice in one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_in_any_order_map_to_their_own_pages() {
    for max in [64, 4] {
        let mut rig = rig(16, max).await;
        for i in 0..16 {
            // SAFETY: page `i` of the guest's own granted pages, alive in `rig`.
            unsafe { rig._pages.as_ptr().add(i * PAGE_SIZE).write(i as u8 + 1) };
        }
        let (refs, cache) = (&rig.refs, &mut rig.cache);
        // Descending references, with the first one again at the end.
        let mut order: Vec<usize> = (0..16).rev().collect();
        order.push(15);
        let segments: Vec<Segment> = order.iter().map(|&i| segment(refs[i])).collect();
        let (iovecs, held) = cache.map(&segments, true).unwrap();
        assert_eq!(iovecs.len(), order.len());
        for (iov, &i) in iovecs.iter().zip(&order) {
            // SAFETY: each iovec points at a mapped page held by `held`.
            let first = unsafe { iov.iov_base.cast::<u8>().read() };
            assert_eq!(first, i as u8 + 1, "segment for page {i} (cache of {max})");
        }
        assert_eq!(cache.entries.len(), if max == 64 { 16 } else { 0 });
        cache.release(held);
    }
}
