use std::time::Duration;

use xen_ring::HeapPages;

use super::*;

fn framebuffer(pages: usize) -> Arc<dyn Surface> {
    Arc::new(SharedSurface(HeapPages::new(pages)))
}

fn read_u32(fb: &dyn Surface, at: usize) -> u32 {
    assert!(at + 4 <= fb.len());
    // SAFETY: checked above.
    unsafe { fb.ptr().add(at).cast::<u32>().read_unaligned() }
}

#[test]
fn rectangles_that_leave_the_surface_are_refused() {
    let ok = Rect {
        offset: 0,
        pitch: 4096,
        width: 1024,
        height: 4,
    };
    assert!(ok.fits(4 * 4096));
    assert!(!ok.fits(4 * 4096 - 1));
    let overflow = Rect {
        offset: u64::MAX - 4,
        pitch: 4096,
        width: 2,
        height: 1,
    };
    assert!(!overflow.fits(u64::MAX));
    let huge = Rect {
        offset: 0,
        pitch: u64::MAX,
        width: 1,
        height: 3,
    };
    assert!(!huge.fits(1 << 30));
    let wide = Rect {
        offset: 0,
        pitch: 4,
        width: u64::MAX,
        height: 1,
    };
    assert!(!wide.fits(1 << 30));
}

#[test]
fn fill_copy_blit_and_fence_run_in_order() {
    let renderer = Renderer::start().unwrap();
    let fb = framebuffer(16);
    let client = renderer.client(Arc::clone(&fb), 1, 16);
    let rect = |offset, w, h| Rect {
        offset,
        pitch: 256,
        width: w,
        height: h,
    };
    client
        .submit(Op::Fill {
            dst: rect(0, 8, 8),
            color: 0x00ff_0000,
        })
        .map_err(|e| e.1)
        .unwrap();
    client
        .submit(Op::Copy {
            src: rect(0, 8, 8),
            dst: rect(64, 8, 8),
        })
        .map_err(|e| e.1)
        .unwrap();
    let source = HeapPages::new(1);
    // SAFETY: the page is ours; 16 bytes at its start.
    unsafe { std::ptr::write_bytes(source.as_ptr(), 0x11, 16) };
    client
        .submit(Op::Blit {
            source: Box::new(SharedSurface(source)),
            src: Rect {
                offset: 0,
                pitch: 16,
                width: 4,
                height: 1,
            },
            dst: rect(8192, 4, 1),
        })
        .map_err(|e| e.1)
        .unwrap();
    client
        .submit(Op::Fill {
            dst: Rect {
                offset: 1 << 20,
                pitch: 4,
                width: 1,
                height: 1,
            },
            color: 1,
        })
        .map_err(|e| e.1)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    client
        .submit(Op::Fence {
            done: Box::new(move || tx.send(()).unwrap()),
        })
        .map_err(|e| e.1)
        .unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(read_u32(fb.as_ref(), 7 * 256 + 28), 0x00ff_0000);
    assert_eq!(
        read_u32(fb.as_ref(), 64 + 7 * 256 + 28),
        0x00ff_0000,
        "copied"
    );
    assert_eq!(read_u32(fb.as_ref(), 8192 + 12), 0x1111_1111, "blitted");
    let c = client.counters();
    assert_eq!(
        (c.commands, c.rejected),
        (5, 1),
        "the fill outside the surface is refused"
    );
    assert_eq!(c.pixels, 64 + 64 + 4);
}

#[test]
fn a_full_queue_gives_the_command_back() {
    let renderer = Renderer::start().unwrap();
    let client = renderer.client(framebuffer(1), 1, 2);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // Park the renderer on a fence that waits for us.
    let gate = Arc::new(std::sync::Barrier::new(2));
    let g = Arc::clone(&gate);
    client
        .submit(Op::Fence {
            done: Box::new(move || {
                g.wait();
                drop(tx);
            }),
        })
        .map_err(|e| e.1)
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let fill = || Op::Fill {
        dst: Rect {
            offset: 0,
            pitch: 4,
            width: 1,
            height: 1,
        },
        color: 0,
    };
    client.submit(fill()).map_err(|e| e.1).unwrap();
    client.submit(fill()).map_err(|e| e.1).unwrap();
    assert!(matches!(client.submit(fill()), Err((_, QueueFull))));
    gate.wait();
    let _ = rx.recv_timeout(Duration::from_secs(5));
}

#[test]
fn a_detached_vgpu_releases_its_framebuffer_and_its_slot_is_reused() {
    let renderer = Renderer::start().unwrap();
    let first_fb = framebuffer(1);
    let first = renderer.client(Arc::clone(&first_fb), 1, 4);
    let second = renderer.client(framebuffer(1), 1, 4);
    assert_eq!(Arc::strong_count(&first_fb), 2);
    drop(first);
    assert_eq!(
        Arc::strong_count(&first_fb),
        1,
        "the renderer let go of the mapping"
    );
    let third_fb = framebuffer(1);
    let third = renderer.client(Arc::clone(&third_fb), 1, 4);
    assert_eq!(third.index, 0, "the free slot is reused");
    assert_eq!(lock(&renderer.inner.state).queues.len(), 2);
    // Both live vGPUs still draw.
    for (client, fb) in [(&second, None), (&third, Some(&third_fb))] {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        client
            .submit(Op::Fill {
                dst: Rect {
                    offset: 0,
                    pitch: 4,
                    width: 1,
                    height: 1,
                },
                color: 0xabcd_ef01,
            })
            .map_err(|e| e.1)
            .unwrap();
        client
            .submit(Op::Fence {
                done: Box::new(move || drop(tx)),
            })
            .map_err(|e| e.1)
            .unwrap();
        let _ = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(client.counters().commands, 2);
        if let Some(fb) = fb {
            assert_eq!(read_u32(fb.as_ref(), 0), 0xabcd_ef01);
        }
    }
}

/// Holds the renderer on a fence, fills every client's queue with `per_client` equal fills and
/// a closing fence, lets it go, and returns each client's pixels at the moment the first queue
/// runs dry (while every queue was backlogged, so the shares are the scheduler's alone). The
/// closing fence that runs first takes the snapshot on the renderer's own thread, so nothing
/// runs between the last fill and the reading however late this thread is scheduled.
fn shares(clients: &[Client], per_client: usize) -> Vec<u64> {
    let gate = Arc::new(std::sync::Barrier::new(2));
    let g = Arc::clone(&gate);
    let (Some(first), true) = (clients.first(), per_client > 0) else {
        return Vec::new();
    };
    first
        .submit(Op::Fence {
            done: Box::new(move || {
                g.wait();
            }),
        })
        .map_err(|e| e.1)
        .unwrap();
    let fill = || Op::Fill {
        dst: Rect {
            offset: 0,
            pitch: 1024,
            width: 256,
            height: 64,
        },
        color: 7,
    };
    let all_counters: Arc<Vec<Arc<ClientCounters>>> =
        Arc::new(clients.iter().map(|c| Arc::clone(&c.counters)).collect());
    let (first_dry, snapshot) = std::sync::mpsc::sync_channel(clients.len());
    for c in clients {
        for _ in 0..per_client {
            c.submit(fill()).map_err(|e| e.1).unwrap();
        }
        let counters = Arc::clone(&all_counters);
        let tx = first_dry.clone();
        c.submit(Op::Fence {
            done: Box::new(move || {
                let pixels = counters.iter().map(|k| k.snapshot().pixels).collect();
                let _ = tx.try_send(pixels);
            }),
        })
        .map_err(|e| e.1)
        .unwrap();
    }
    gate.wait();
    snapshot.recv_timeout(Duration::from_secs(60)).unwrap()
}

#[test]
fn equal_weights_share_the_renderer_equally_and_weights_scale_shares() {
    let renderer = Renderer::start().unwrap();
    let clients: Vec<Client> = (0..4)
        .map(|_| renderer.client(framebuffer(16), 1, 400))
        .collect();
    let pixels = shares(&clients, 300);
    let mean = pixels.iter().sum::<u64>() as f64 / 4.0;
    for p in &pixels {
        assert!((*p as f64 - mean).abs() / mean < 0.2, "{pixels:?}");
    }
    drop(clients);
    let pair = [
        renderer.client(framebuffer(16), 2, 400),
        renderer.client(framebuffer(16), 1, 400),
    ];
    let pixels = shares(&pair, 300);
    let ratio = pixels[0] as f64 / pixels[1] as f64;
    assert!((1.6..2.4).contains(&ratio), "weight 2 vs 1 got {ratio:.2}");
}
