package gossip

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/serf/serf"
)

// haveQueryName is the serf query Confirm sends: "do you hold node X's set
// at version V or newer?". Members running a build without Confirm ignore
// it and never answer.
const haveQueryName = "shoal.have"

// maxConfirmWaits bounds the queries a member holds while it pulls the sets
// they ask about; beyond it new queries are left unanswered and their askers
// ask again after the query's deadline.
const maxConfirmWaits = 256

// maxFilterBytes bounds the node names a re-issued query lists in its
// filter, so the query stays inside serf's 1 KiB QuerySizeLimit; with more
// unconfirmed members the query goes to everyone and members that already
// answered answer again (a few bytes each).
const maxFilterBytes = 512

// Confirm waits until every other live member's table holds this node's
// endpoint set at the version current when Confirm was called, or a newer
// one. The routing mesh calls it after withdrawing a task's endpoints with
// SetLocal and before stopping the task: once Confirm returns nil, no
// member's table still lists them, and a balancer applying that table
// (after its next Watch signal, which the change has already raised) sends
// the task no new connections.
//
// The guarantee is about members' tables: Confirm returns once each one has
// reported holding the version; whatever applies the table follows right
// after. The members counted are serf's alive members other than this node
// as of when the wait ends: one that fails or leaves meanwhile no longer
// counts (it dropped nothing, but it no longer balances either), and one
// that joins meanwhile must confirm too. With no other live member Confirm
// returns nil at once.
//
// How: Confirm sends a serf query ("shoal.have": this node's ID, epoch and
// version, a few dozen bytes) to all members. A member whose table already
// holds the version answers at once; one that is behind (it missed the
// gossip) pulls this node's set over a stream and answers as soon as its
// table has caught up, or never if the query's deadline passes first.
// Answers are a few bytes each, one per member. Confirm keeps at most one
// query outstanding; when its deadline (serf's default query timeout,
// GossipInterval * 16 * log10(members), about 3 s for a few members at the
// default settings) passes with live members still silent, it asks those
// again. So the cost is one query per call, one small answer per member,
// and a re-query per timeout only while someone has not answered.
//
// Confirm blocks until then or until ctx ends, returning ctx.Err(): a
// member that cannot answer (partitioned away but not yet declared failed,
// or running an older build that does not know the query) holds Confirm
// until ctx ends, so callers must bound ctx. It returns ErrNotStarted before
// Start and ErrStopped once the node is stopping or stopped. It is safe for
// concurrent use.
func (n *Node) Confirm(ctx context.Context) error {
	s, err := n.runningSerf()
	if err != nil {
		return err
	}
	_, epoch, version := n.tbl.local()
	n.stats.confirms.Add(1)
	payload := encodeHaveQuery(&haveQuery{Node: n.cfg.NodeID, Epoch: epoch, Version: version})
	confirmed := make(map[string]bool)
	var resp *serf.QueryResponse
	defer func() {
		if resp != nil {
			resp.Close()
		}
	}()
	for round := 0; ; {
		changed := n.memberChanges() // before reading the members, so no change is missed
		left := n.unconfirmed(s, confirmed)
		if len(left) == 0 {
			n.stats.confirmsOK.Add(1)
			return nil
		}
		if err := ctx.Err(); err != nil {
			n.stats.confirmsCanceled.Add(1)
			return err
		}
		select {
		case <-n.done:
			n.stats.confirmsCanceled.Add(1)
			return ErrStopped
		default:
		}
		if resp != nil && resp.Finished() {
			resp.Close()
			resp = nil
		}
		if resp == nil {
			round++
			resp, err = s.Query(haveQueryName, payload, haveQueryParams(s, left))
			if err != nil {
				resp = nil
				n.stats.confirmsCanceled.Add(1)
				if n.isStopped() {
					return ErrStopped
				}
				return fmt.Errorf("gossip: Confirm: query: %w", err)
			}
			n.stats.confirmQueries.Add(1)
			if round > 1 {
				n.log.Debug("gossip: Confirm: asking again", "version", version, "round", round,
					"unconfirmed", len(left), "first", left[0])
			}
		}
		select {
		case r, ok := <-resp.ResponseCh():
			if !ok {
				resp = nil // deadline passed: ask the silent members again
				continue
			}
			held, err := decodeHaveReply(r.Payload)
			if err != nil {
				n.log.Debug("gossip: Confirm: bad answer", "member", r.From, "err", err)
				continue
			}
			if held >= version {
				confirmed[r.From] = true
			}
		case <-changed: // a member joined, failed or left: count again
		case <-ctx.Done():
		case <-n.done:
		}
	}
}

// runningSerf returns the serf member, or ErrNotStarted / ErrStopped.
func (n *Node) runningSerf() (*serf.Serf, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.stopped:
		return nil, ErrStopped
	case !n.started:
		return nil, ErrNotStarted
	}
	return n.serf, nil
}

func (n *Node) isStopped() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stopped
}

// unconfirmed returns the alive members other than this node that are not
// in confirmed, sorted, and forgets confirmations from members no longer
// alive (one that comes back is a new incarnation and must answer again).
func (n *Node) unconfirmed(s *serf.Serf, confirmed map[string]bool) []string {
	alive := make(map[string]bool)
	var left []string
	for _, m := range s.Members() {
		if m.Status != serf.StatusAlive || m.Name == n.cfg.NodeID {
			continue
		}
		alive[m.Name] = true
		if !confirmed[m.Name] {
			left = append(left, m.Name)
		}
	}
	for id := range confirmed {
		if !alive[id] {
			delete(confirmed, id)
		}
	}
	slices.Sort(left)
	return left
}

// haveQueryParams addresses a query to the unconfirmed members when their
// names fit the filter budget, else to everyone.
func haveQueryParams(s *serf.Serf, left []string) *serf.QueryParam {
	return haveQueryParamsFor(s.DefaultQueryTimeout(), left)
}

func haveQueryParamsFor(timeout time.Duration, left []string) *serf.QueryParam {
	p := &serf.QueryParam{Timeout: timeout}
	size := 0
	for _, id := range left {
		size += len(id) + 2
	}
	if size <= maxFilterBytes {
		p.FilterNodes = left
	}
	return p
}

// memberChanges returns a channel closed at the next membership change.
func (n *Node) memberChanges() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.memberCh
}

// membersChanged wakes every Confirm waiting on memberChanges.
func (n *Node) membersChanged() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.memberCh)
	n.memberCh = make(chan struct{})
}

// confirmWait is a have query this member is behind on: it is answered
// once the table holds the version, or dropped at the query's deadline.
type confirmWait struct {
	q        *serf.Query
	node     string
	version  uint64
	deadline time.Time // on the Node's Clock
}

// handleHaveQuery answers a have query at once if the table holds the
// version; otherwise it pulls the author's set now and leaves the answer to
// confirmLoop. It never blocks the event loop.
func (n *Node) handleHaveQuery(q *serf.Query) {
	if q.SourceNode() == n.cfg.NodeID {
		return // serf delivers a query to its sender too
	}
	hq, err := decodeHaveQuery(q.Payload)
	if err != nil {
		n.log.Warn("gossip: bad have query", "from", q.SourceNode(), "err", err)
		return
	}
	if held := n.tbl.versionOf(hq.Node); held >= hq.Version {
		n.answerHave(q, held)
		return
	}
	n.stats.confirmDeferred.Add(1)
	n.tbl.noteVersions([]nodeVersion{{Node: hq.Node, Version: hq.Version}})
	n.schedulePull(hq.Node, 0, true)
	n.confMu.Lock()
	if len(n.confWaits) >= maxConfirmWaits {
		n.confMu.Unlock()
		n.log.Debug("gossip: too many have queries waiting; one left unanswered", "from", q.SourceNode())
		return
	}
	// The query's deadline is serf's, on the wall clock; the wait expires
	// as long after it arrived on this node's Clock.
	deadline := n.clock.Now().Add(time.Until(q.Deadline()))
	n.confWaits = append(n.confWaits, &confirmWait{q: q, node: hq.Node, version: hq.Version, deadline: deadline})
	n.confMu.Unlock()
	n.kickConfirm() // the table may have caught up since the check above
}

func (n *Node) answerHave(q *serf.Query, held uint64) {
	if err := q.Respond(encodeHaveReply(held)); err != nil {
		n.log.Debug("gossip: have query not answered", "from", q.SourceNode(), "err", err)
		return
	}
	n.stats.confirmAnswers.Add(1)
}

// kickConfirm tells confirmLoop the table may have moved.
func (n *Node) kickConfirm() {
	select {
	case n.confKick <- struct{}{}:
	default:
	}
}

// confirmLoop answers waiting have queries as the table catches up and
// drops those whose deadline passed.
func (n *Node) confirmLoop() {
	defer n.wg.Done()
	for {
		now := n.clock.Now()
		next := n.serveConfirmWaits(now)
		var timer Timer
		var expire <-chan time.Time
		if !next.IsZero() {
			timer = n.clock.NewTimer(next.Sub(now))
			expire = timer.C()
		}
		select {
		case <-n.done:
		case <-n.confKick:
		case <-expire:
		}
		if timer != nil {
			timer.Stop()
		}
		select {
		case <-n.done:
			return
		default:
		}
	}
}

// serveConfirmWaits answers the waits the table now satisfies, drops the
// expired ones and returns the earliest deadline left (zero if none).
func (n *Node) serveConfirmWaits(now time.Time) time.Time {
	type answer struct {
		q    *serf.Query
		held uint64
	}
	var ready []answer
	var next time.Time
	n.confMu.Lock()
	keep := n.confWaits[:0]
	for _, w := range n.confWaits {
		if held := n.tbl.versionOf(w.node); held >= w.version {
			ready = append(ready, answer{w.q, held})
			continue
		}
		if !now.Before(w.deadline) {
			continue // the asker has stopped listening; it asks again
		}
		if next.IsZero() || w.deadline.Before(next) {
			next = w.deadline
		}
		keep = append(keep, w)
	}
	clear(n.confWaits[len(keep):])
	n.confWaits = keep
	n.confMu.Unlock()
	for _, a := range ready {
		n.answerHave(a.q, a.held)
	}
	return next
}

// haveQuery is the payload of a have query: "do you hold Node's set at
// Version (of incarnation Epoch) or newer?".
type haveQuery struct {
	Node    string
	Epoch   uint64
	Version uint64
}

func encodeHaveQuery(hq *haveQuery) []byte {
	var e encoder
	e.byte(wireFormat)
	e.str(hq.Node)
	e.uvarint(hq.Epoch)
	e.uvarint(hq.Version)
	return e.b
}

// decodeHaveQuery parses a have query's payload; it never panics on bad
// input.
func decodeHaveQuery(b []byte) (*haveQuery, error) {
	d := decoder{b: b}
	d.format()
	hq := &haveQuery{Node: d.nodeID()}
	hq.Epoch = d.uvarint()
	hq.Version = d.uvarint()
	if d.err == nil && hq.Version < hq.Epoch {
		d.fail(fmt.Errorf("%w: version below epoch", errBad))
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return hq, nil
}

// encodeHaveReply renders an answer: the version the member holds.
func encodeHaveReply(held uint64) []byte {
	var e encoder
	e.byte(wireFormat)
	e.uvarint(held)
	return e.b
}

func decodeHaveReply(b []byte) (uint64, error) {
	d := decoder{b: b}
	d.format()
	v := d.uvarint()
	if err := d.end(); err != nil {
		return 0, err
	}
	if v == 0 {
		return 0, fmt.Errorf("%w: zero version", errBad)
	}
	return v, nil
}
