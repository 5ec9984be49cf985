package raftstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"go.etcd.io/raft/v3"
)

// headerLen is the size of the request ID prefixed to every proposed entry's data.
const headerLen = 8

type proposal struct {
	id   uint64
	data []byte // header + payload
}

type result struct {
	val any
	err error
}

// Propose appends data to the replicated log and returns the StateMachine.Apply result for it,
// once the entry is committed and applied on this member.
//
// Propose waits for Ready first (bounded by ctx). On the leader it proposes locally. On a
// follower, with Config.Forwarder set, it forwards data to the leader and returns (nil, the
// error Forward returned): the leader's Apply result comes back only as an error, and this
// member may apply the entry a little later than Propose returns. Without a Forwarder a follower
// returns ErrNotLeader (nothing was proposed). If no leader is known, Propose waits for one for
// up to one election timeout (ElectionTick*TickInterval) and then fails with a *QuorumError
// (errors.Is ErrNoQuorum) saying how many voters are reachable and how many are needed; a leader
// that has not heard from a quorum for an election timeout fails with one at once.
//
// It returns ErrStopped if the node is not running, and ErrLeadershipLost if leadership was
// lost while the entry was in flight. If ctx ends first it returns ctx.Err(): the entry may
// still commit and be applied later, without anyone receiving the result. Likewise an entry in
// flight when Stop is called may have been persisted and will then be applied after the next
// Start. data is copied; the caller may reuse it.
//
// Data longer than Config.MaxEntryBytes is refused at once with an error matching
// ErrEntryTooLarge (on a follower too, before forwarding): nothing is proposed.
func (n *Node) Propose(ctx context.Context, data []byte) (any, error) {
	if err := n.checkEntrySize(data); err != nil {
		return nil, err
	}
	if err := n.waitReady(ctx); err != nil {
		return nil, err
	}
	// A forward refused with ErrNotLeader (leadership moved before the leader proposed) is
	// retried on the new leader a few times; nothing was proposed, so retrying is safe.
	const maxForwardAttempts = 4
	for attempt := 1; ; attempt++ {
		if n.isLeader.Load() {
			val, err := n.proposeLocal(ctx, data)
			if errors.Is(err, ErrNotLeader) && attempt < maxForwardAttempts && ctx.Err() == nil {
				// Leadership was lost, or is being transferred, before the entry was
				// proposed: wait for the new leader and try there.
				if werr := n.awaitLeaderChange(ctx, n.cfg.ID); werr != nil {
					return nil, werr
				}
				continue
			}
			return val, err
		}
		lead, err := n.awaitLeader(ctx)
		if err != nil {
			return nil, err
		}
		if lead == n.cfg.ID {
			continue
		}
		if n.cfg.Forwarder == nil {
			return nil, ErrNotLeader
		}
		n.ctr.forwarded.Add(1)
		err = n.cfg.Forwarder.Forward(ctx, lead, data)
		if errors.Is(err, ErrNotLeader) && attempt < maxForwardAttempts && ctx.Err() == nil {
			if werr := n.awaitLeaderChange(ctx, lead); werr != nil {
				return nil, werr
			}
			continue
		}
		return nil, err
	}
}

// ProposeOnLeader is Propose without forwarding: on a member that is not the leader it returns
// ErrNotLeader at once. The receiving side of a Forwarder uses it, so that a forwarded entry is
// never forwarded again.
func (n *Node) ProposeOnLeader(ctx context.Context, data []byte) (any, error) {
	if err := n.checkEntrySize(data); err != nil {
		return nil, err
	}
	if err := n.waitReady(ctx); err != nil {
		return nil, err
	}
	return n.proposeLocal(ctx, data)
}

// checkEntrySize refuses data longer than Config.MaxEntryBytes: an entry the transport could
// not carry would commit on the leader and never replicate.
func (n *Node) checkEntrySize(data []byte) error {
	if len(data) > n.cfg.MaxEntryBytes {
		return fmt.Errorf("%w: %d bytes exceeds the limit of %d bytes (Config.MaxEntryBytes)",
			ErrEntryTooLarge, len(data), n.cfg.MaxEntryBytes)
	}
	return nil
}

func (n *Node) nextRequestID() uint64 {
	id := n.reqSeq.Add(1)
	if id == 0 { // 0 means "no waiter"
		id = n.reqSeq.Add(1)
	}
	return id
}

func (n *Node) proposeLocal(ctx context.Context, data []byte) (any, error) {
	if !n.isLeader.Load() {
		return nil, ErrNotLeader
	}
	if qe := n.quorumLost.Load(); qe != nil {
		cp := *qe
		return nil, &cp
	}
	id := n.nextRequestID()
	buf := make([]byte, headerLen+len(data))
	binary.BigEndian.PutUint64(buf, id)
	copy(buf[headerLen:], data)
	ch := n.addWaiter(id)

	select {
	case n.propc <- proposal{id: id, data: buf}:
	case <-n.donec:
		n.dropWaiter(id)
		return nil, ErrStopped
	case <-ctx.Done():
		n.dropWaiter(id)
		return nil, ctx.Err()
	}
	r, err := n.waitResult(ctx, id, ch)
	if err != nil {
		return nil, err
	}
	return r.val, r.err
}

func (n *Node) addWaiter(id uint64) chan result {
	ch := make(chan result, 1)
	n.waitMu.Lock()
	n.waiters[id] = ch
	n.waitMu.Unlock()
	return ch
}

// waitResult waits for the result delivered to waiter id.
func (n *Node) waitResult(ctx context.Context, id uint64, ch chan result) (result, error) {
	select {
	case r := <-ch:
		return r, nil
	case <-n.donec:
		// The loop fails all waiters before closing donec, so a result may be waiting.
		select {
		case r := <-ch:
			return r, nil
		default:
			return result{}, ErrStopped
		}
	case <-ctx.Done():
		n.dropWaiter(id)
		return result{}, ctx.Err()
	}
}

func (n *Node) dropWaiter(id uint64) {
	n.waitMu.Lock()
	delete(n.waiters, id)
	n.waitMu.Unlock()
}

func (n *Node) deliver(id uint64, r result) {
	if id == 0 {
		return
	}
	n.waitMu.Lock()
	ch, ok := n.waiters[id]
	delete(n.waiters, id)
	n.waitMu.Unlock()
	if ok {
		ch <- r // buffered, one send per waiter
	}
}

func (n *Node) failWaiters(err error) {
	n.waitMu.Lock()
	defer n.waitMu.Unlock()
	for id, ch := range n.waiters {
		ch <- result{err: err}
		delete(n.waiters, id)
	}
}

func (n *Node) propose(p proposal) {
	if err := n.rn.Propose(p.data); err != nil {
		if errors.Is(err, raft.ErrProposalDropped) && !n.isLeader.Load() {
			err = ErrNotLeader
		} else if errors.Is(err, raft.ErrProposalDropped) && n.rn.BasicStatus().LeadTransferee != raft.None {
			err = fmt.Errorf("raftstore: leadership is being transferred: %w", ErrNotLeader)
		} else {
			err = fmt.Errorf("raftstore: proposal refused: %w", err)
		}
		n.deliver(p.id, result{err: err})
		return
	}
	n.ctr.proposals.Add(1)
}
