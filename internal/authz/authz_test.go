package authz

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/pki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	clusterID      = "cluster0000000000000000aa"
	otherClusterID = "cluster0000000000000000bb"
)

// Methods of each rule, and one that is not Shoal's.
const (
	mAnyone   = "/shoal.api.CA/GetRootCA"
	mAnyCert  = "/shoal.api.CA/RenewCertificate"
	mNode     = "/shoal.api.Dispatcher/Heartbeat"
	mManager  = "/shoal.api.Raft/Messages"
	mOperator = "/shoal.api.Control/ListNodes"
	mForeign  = "/grpc.health.v1.Health/Check"
)

// certs are the certificates of the callers the tests use, issued once.
type certs struct {
	worker, manager, operator, otherWorker, otherManager *x509.Certificate
	root, otherRoot                                      *x509.Certificate
}

var (
	certsOnce sync.Once
	testCerts certs
	certsErr  error
)

func issue(root *pki.RootCA, subj pki.Subject) (*x509.Certificate, error) {
	signer, err := pki.NewLocalSigner(root, nil)
	if err != nil {
		return nil, err
	}
	_, csr, err := pki.NewKeyAndCSR(subj.NodeID)
	if err != nil {
		return nil, err
	}
	certPEM, err := signer.Sign(context.Background(), pki.SignRequest{CSR: csr, Subject: subj, Validity: pki.MinCertValidity})
	if err != nil {
		return nil, err
	}
	leaf, _, err := pki.VerifyCert(certPEM, root.Pool(), time.Now())
	return leaf, err
}

func loadCerts(t *testing.T) certs {
	t.Helper()
	certsOnce.Do(func() {
		certsErr = func() error {
			root, err := pki.NewRootCA(clusterID, 0)
			if err != nil {
				return err
			}
			other, err := pki.NewRootCA(otherClusterID, 0)
			if err != nil {
				return err
			}
			testCerts.root, testCerts.otherRoot = root.Cert, other.Cert
			for _, c := range []struct {
				dst  **x509.Certificate
				root *pki.RootCA
				subj pki.Subject
			}{
				{&testCerts.worker, root, pki.Subject{NodeID: "worker1", Role: pki.OUWorker, ClusterID: clusterID}},
				{&testCerts.manager, root, pki.Subject{NodeID: "manager1", Role: pki.OUManager, ClusterID: clusterID}},
				{&testCerts.operator, root, pki.Subject{NodeID: "alice", Role: pki.OUClient, ClusterID: clusterID}},
				{&testCerts.otherWorker, other, pki.Subject{NodeID: "worker1", Role: pki.OUWorker, ClusterID: otherClusterID}},
				{&testCerts.otherManager, other, pki.Subject{NodeID: "manager1", Role: pki.OUManager, ClusterID: otherClusterID}},
			} {
				if *c.dst, err = issue(c.root, c.subj); err != nil {
					return err
				}
			}
			return nil
		}()
	})
	require.NoError(t, certsErr)
	return testCerts
}

// peerCtx is the context of an RPC by a peer that presented leaf (nil: no
// certificate), verified to root.
func peerCtx(leaf, root *x509.Certificate) context.Context {
	info := credentials.TLSInfo{State: tls.ConnectionState{}}
	if leaf != nil {
		info.State.PeerCertificates = []*x509.Certificate{leaf}
		info.State.VerifiedChains = [][]*x509.Certificate{{leaf, root}}
	}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: info})
}

// caller is a kind of caller of the tests' tables.
type caller int

const (
	anonymous caller = iota
	worker
	manager
	operator
	otherWorker  // a worker certificate of another cluster
	otherManager // a manager certificate of another cluster
	unverified   // a certificate the handshake did not verify (no VerifiedChains)
)

func (c caller) String() string {
	return [...]string{"anonymous", "worker", "manager", "operator", "other-cluster worker", "other-cluster manager", "unverified"}[c]
}

func (c caller) ctx(t *testing.T) context.Context {
	cs := loadCerts(t)
	switch c {
	case worker:
		return peerCtx(cs.worker, cs.root)
	case manager:
		return peerCtx(cs.manager, cs.root)
	case operator:
		return peerCtx(cs.operator, cs.root)
	case otherWorker:
		return peerCtx(cs.otherWorker, cs.otherRoot)
	case otherManager:
		return peerCtx(cs.otherManager, cs.otherRoot)
	case unverified:
		info := credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cs.manager}}}
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: info})
	}
	return peerCtx(nil, nil)
}

func codeOf(err error) codes.Code { return status.Code(err) }

func TestRuleString(t *testing.T) {
	for _, tc := range []struct {
		r    Rule
		want string
	}{
		{Anyone, "anyone"}, {AnyCert, "any certificate"}, {Node, "node"}, {Manager, "manager"},
		{Operator, "operator"}, {Rule(42), "unknown"},
	} {
		assert.Equal(t, tc.want, tc.r.String())
	}
}

// TestRuleFor checks every method of every Shoal service gets its rule, and
// methods that are not Shoal's get none.
func TestRuleFor(t *testing.T) {
	services := []struct {
		desc grpc.ServiceDesc
		rule func(method string) Rule
	}{
		{api.CA_ServiceDesc, func(m string) Rule {
			if m == "GetRootCA" {
				return Anyone
			}
			return AnyCert
		}},
		{api.Join_ServiceDesc, func(string) Rule { return Anyone }},
		{api.Dispatcher_ServiceDesc, func(string) Rule { return Node }},
		{api.Raft_ServiceDesc, func(string) Rule { return Manager }},
		{api.Control_ServiceDesc, func(string) Rule { return Operator }},
	}
	n := 0
	for _, svc := range services {
		var names []string
		for _, m := range svc.desc.Methods {
			names = append(names, m.MethodName)
		}
		for _, s := range svc.desc.Streams {
			names = append(names, s.StreamName)
		}
		require.NotEmpty(t, names, svc.desc.ServiceName)
		for _, name := range names {
			full := "/" + svc.desc.ServiceName + "/" + name
			t.Run(full, func(t *testing.T) {
				got, ok := RuleFor(full)
				require.True(t, ok)
				assert.Equal(t, svc.rule(name), got)
			})
			n++
		}
	}
	assert.GreaterOrEqual(t, n, 25, "every service's methods were checked")

	for _, m := range []string{
		"",
		mForeign,
		"/shoal.api.Join/Other",    // not the join method
		"/shoal.api.CAX/GetRootCA", // another service sharing a prefix
		"/shoal.api.Controller/ListNodes",
		"shoal.api.Control/ListNodes", // no leading slash
		"/shoal.api.Dispatcher",       // no method
	} {
		t.Run("foreign "+m, func(t *testing.T) {
			_, ok := RuleFor(m)
			assert.False(t, ok)
		})
	}
}

// TestAuthorizeByCertificate checks every rule against every kind of caller
// when the certificate alone decides (no Lookup).
func TestAuthorizeByCertificate(t *testing.T) {
	const (
		ok  = codes.OK
		unA = codes.Unauthenticated
		pd  = codes.PermissionDenied
	)
	callers := []caller{anonymous, worker, manager, operator, otherWorker, otherManager, unverified}
	for _, tc := range []struct {
		method string
		want   []codes.Code // by callers
	}{
		//                   anon worker mgr operator other-w other-m unverified
		{mAnyone, []codes.Code{ok, ok, ok, ok, ok, ok, ok}},
		{mAnyCert, []codes.Code{unA, ok, ok, ok, pd, pd, unA}},
		{mNode, []codes.Code{unA, ok, ok, pd, pd, pd, unA}},
		{mManager, []codes.Code{unA, pd, ok, pd, pd, pd, unA}},
		{mOperator, []codes.Code{unA, pd, ok, ok, pd, pd, unA}},
		{mForeign, []codes.Code{pd, pd, pd, pd, pd, pd, pd}},
	} {
		for i, c := range callers {
			t.Run(tc.method+"/"+c.String(), func(t *testing.T) {
				a := New(Config{ClusterID: func() string { return clusterID }})
				subj, err := a.Authorize(c.ctx(t), tc.method)
				assert.Equal(t, tc.want[i], codeOf(err), "err: %v", err)
				if err == nil && c != anonymous && c != unverified {
					assert.NotEmpty(t, subj.NodeID, "an authenticated caller's subject is returned")
				}
			})
		}
	}
}

func TestAuthorizeReturnsTheSubject(t *testing.T) {
	a := New(Config{ClusterID: func() string { return clusterID }})
	subj, err := a.Authorize(manager.ctx(t), mManager)
	require.NoError(t, err)
	assert.Equal(t, pki.Subject{NodeID: "manager1", Role: pki.OUManager, ClusterID: clusterID}, subj)

	subj, err = a.Authorize(anonymous.ctx(t), mAnyone)
	require.NoError(t, err)
	assert.Zero(t, subj, "an anonymous caller of an open method has no subject")

	_, err = a.Authorize(context.Background(), mAnyCert)
	assert.Equal(t, codes.Unauthenticated, codeOf(err), "no peer in the context at all")
}

// TestAuthorizeUnknownCluster checks that while the cluster ID is unknown
// (ClusterID nil or returning ""), any cluster's certificate passes the
// cluster check, the role check still applies.
func TestAuthorizeUnknownCluster(t *testing.T) {
	for _, cfg := range []Config{{}, {ClusterID: func() string { return "" }}} {
		a := New(cfg)
		_, err := a.Authorize(otherManager.ctx(t), mManager)
		assert.NoError(t, err)
		_, err = a.Authorize(otherWorker.ctx(t), mNode)
		assert.NoError(t, err)
		_, err = a.Authorize(otherWorker.ctx(t), mManager)
		assert.Equal(t, codes.PermissionDenied, codeOf(err))
	}
}

// TestAuthorizeWithLookup checks what the store says of the caller's node
// against every rule: a removed node is refused everything but the open
// methods, a node the store no longer has as a manager is refused Raft and
// Control but keeps Dispatcher and CA, and an unchecked record leaves the
// certificate to decide.
func TestAuthorizeWithLookup(t *testing.T) {
	const (
		ok = codes.OK
		pd = codes.PermissionDenied
	)
	methods := []string{mAnyone, mAnyCert, mNode, mManager, mOperator}
	for _, tc := range []struct {
		name   string
		caller caller
		rec    NodeRecord
		want   []codes.Code // by methods
	}{
		//                                                                anyone anycert node mgr operator
		{"manager unchecked", manager, NodeRecord{}, []codes.Code{ok, ok, ok, ok, ok}},
		{"worker unchecked, says manager", worker, NodeRecord{Exists: true, Manager: true}, []codes.Code{ok, ok, ok, pd, pd}},
		{"manager in store", manager, NodeRecord{Checked: true, Exists: true, Manager: true}, []codes.Code{ok, ok, ok, ok, ok}},
		{"manager demoted", manager, NodeRecord{Checked: true, Exists: true}, []codes.Code{ok, ok, ok, pd, pd}},
		{"manager removed", manager, NodeRecord{Checked: true}, []codes.Code{ok, pd, pd, pd, pd}},
		{"worker unchecked", worker, NodeRecord{}, []codes.Code{ok, ok, ok, pd, pd}},
		{"worker in store", worker, NodeRecord{Checked: true, Exists: true}, []codes.Code{ok, ok, ok, pd, pd}},
		{"worker promoted, old certificate", worker, NodeRecord{Checked: true, Exists: true, Manager: true}, []codes.Code{ok, ok, ok, pd, pd}},
		{"worker removed", worker, NodeRecord{Checked: true}, []codes.Code{ok, pd, pd, pd, pd}},
		// Operators are not nodes: the store is not asked about them.
		{"operator, lookup says removed", operator, NodeRecord{Checked: true}, []codes.Code{ok, ok, pd, pd, ok}},
		{"anonymous", anonymous, NodeRecord{Checked: true, Exists: true, Manager: true}, []codes.Code{ok, codes.Unauthenticated, codes.Unauthenticated, codes.Unauthenticated, codes.Unauthenticated}},
	} {
		for i, m := range methods {
			t.Run(tc.name+"/"+m, func(t *testing.T) {
				var asked []string
				a := New(Config{
					ClusterID: func() string { return clusterID },
					Lookup: func(nodeID string) NodeRecord {
						asked = append(asked, nodeID)
						return tc.rec
					},
				})
				_, err := a.Authorize(tc.caller.ctx(t), m)
				assert.Equal(t, tc.want[i], codeOf(err), "err: %v", err)
				if tc.caller == operator || tc.caller == anonymous || m == mAnyone {
					assert.Empty(t, asked, "the store is not asked")
				}
				if tc.rec.Checked && tc.caller == manager && err != nil {
					assert.Equal(t, []string{"manager1"}, asked, "the store is asked about the certificate's node")
				}
			})
		}
	}
}

// TestAuthorizeLookupAfterCertificateChecks checks that a caller the
// certificate already refuses is refused without asking the store.
func TestAuthorizeLookupAfterCertificateChecks(t *testing.T) {
	asked := 0
	a := New(Config{ClusterID: func() string { return clusterID }, Lookup: func(string) NodeRecord {
		asked++
		return NodeRecord{Checked: true, Exists: true, Manager: true}
	}})
	_, err := a.Authorize(worker.ctx(t), mManager)
	assert.Equal(t, codes.PermissionDenied, codeOf(err))
	_, err = a.Authorize(otherManager.ctx(t), mManager)
	assert.Equal(t, codes.PermissionDenied, codeOf(err))
	assert.Zero(t, asked)
}

func TestUnary(t *testing.T) {
	for _, tc := range []struct {
		name   string
		caller caller
		method string
		req    any
		want   codes.Code
	}{
		{"own heartbeat", worker, mNode, &api.HeartbeatRequest{NodeId: "worker1"}, codes.OK},
		{"another node's heartbeat", worker, mNode, &api.HeartbeatRequest{NodeId: "worker2"}, codes.PermissionDenied},
		{"empty node ID", worker, mNode, &api.HeartbeatRequest{}, codes.PermissionDenied},
		{"own task status", worker, "/shoal.api.Dispatcher/UpdateTaskStatus", &api.UpdateTaskStatusRequest{NodeId: "worker1"}, codes.OK},
		{"another node's task status", worker, "/shoal.api.Dispatcher/UpdateTaskStatus", &api.UpdateTaskStatusRequest{NodeId: "manager1"}, codes.PermissionDenied},
		{"a manager for a worker", manager, "/shoal.api.Dispatcher/Leave", &api.LeaveRequest{NodeId: "worker1"}, codes.PermissionDenied},
		{"a manager for itself", manager, "/shoal.api.Dispatcher/Leave", &api.LeaveRequest{NodeId: "manager1"}, codes.OK},
		// The own-node check is the dispatcher's: other services' requests
		// may name any node.
		{"not a dispatcher method", manager, "/shoal.api.Raft/Propose", &api.HeartbeatRequest{NodeId: "worker1"}, codes.OK},
		{"operator names a node", operator, "/shoal.api.Control/GetNode", &api.GetRequest{Id: "worker1"}, codes.OK},
		{"a request without a node", manager, mNode, &api.GetRequest{Id: "worker2"}, codes.OK},
		{"unauthorized", worker, mOperator, &api.ListNodesRequest{}, codes.PermissionDenied},
		{"anonymous", anonymous, mNode, &api.HeartbeatRequest{NodeId: "worker1"}, codes.Unauthenticated},
		{"not Shoal's", manager, mForeign, &api.GetRequest{}, codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := New(Config{ClusterID: func() string { return clusterID }})
			called := false
			resp, err := a.Unary(tc.caller.ctx(t), tc.req, &grpc.UnaryServerInfo{FullMethod: tc.method},
				func(ctx context.Context, req any) (any, error) {
					called = true
					assert.Same(t, tc.req, req)
					return "response", nil
				})
			assert.Equal(t, tc.want, codeOf(err), "err: %v", err)
			assert.Equal(t, tc.want == codes.OK, called, "the handler runs only when authorized")
			if tc.want == codes.OK {
				assert.Equal(t, "response", resp)
			} else {
				assert.Nil(t, resp)
			}
		})
	}
}

// fakeStream is a server stream that receives msgs, then io.EOF.
type fakeStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs []proto.Message
}

func (s *fakeStream) Context() context.Context { return s.ctx }

func (s *fakeStream) RecvMsg(m any) error {
	if len(s.msgs) == 0 {
		return io.EOF
	}
	proto.Merge(m.(proto.Message), s.msgs[0])
	s.msgs = s.msgs[1:]
	return nil
}

func TestStream(t *testing.T) {
	for _, tc := range []struct {
		name     string
		caller   caller
		method   string
		msgs     []proto.Message
		wantOpen codes.Code   // the interceptor's own answer, before the handler
		wantRecv []codes.Code // each RecvMsg's, the handler's view
	}{
		{"own session", worker, "/shoal.api.Dispatcher/Session", []proto.Message{&api.SessionRequest{NodeId: "worker1"}},
			codes.OK, []codes.Code{codes.OK}},
		{"another node's session", worker, "/shoal.api.Dispatcher/Session", []proto.Message{&api.SessionRequest{NodeId: "worker2"}},
			codes.OK, []codes.Code{codes.PermissionDenied}},
		{"own then another node's assignments", manager, "/shoal.api.Dispatcher/Assignments",
			[]proto.Message{&api.AssignmentsRequest{NodeId: "manager1"}, &api.AssignmentsRequest{NodeId: "worker1"}},
			codes.OK, []codes.Code{codes.OK, codes.PermissionDenied}},
		{"raft stream", manager, "/shoal.api.Raft/Messages", []proto.Message{&api.RaftMessageBatch{}},
			codes.OK, []codes.Code{codes.OK}},
		{"raft stream by a worker", worker, "/shoal.api.Raft/Messages", nil, codes.PermissionDenied, nil},
		{"anonymous session", anonymous, "/shoal.api.Dispatcher/Session", nil, codes.Unauthenticated, nil},
		{"operator watch", operator, "/shoal.api.Control/Watch", []proto.Message{&api.WatchRequest{}},
			codes.OK, []codes.Code{codes.OK}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := New(Config{ClusterID: func() string { return clusterID }})
			ss := &fakeStream{ctx: tc.caller.ctx(t), msgs: tc.msgs}
			var got []codes.Code
			called := false
			err := a.Stream(nil, ss, &grpc.StreamServerInfo{FullMethod: tc.method}, func(_ any, s grpc.ServerStream) error {
				called = true
				assert.Same(t, ss.ctx, s.Context())
				for range tc.msgs {
					m := newMsg(tc.method)
					got = append(got, codeOf(s.RecvMsg(m)))
				}
				assert.ErrorIs(t, s.RecvMsg(newMsg(tc.method)), io.EOF, "a receive error passes through")
				return errors.New("handler done")
			})
			if tc.wantOpen != codes.OK {
				assert.Equal(t, tc.wantOpen, codeOf(err), "err: %v", err)
				assert.False(t, called, "the handler does not run")
				return
			}
			assert.EqualError(t, err, "handler done")
			assert.Equal(t, tc.wantRecv, got)
		})
	}
}

func newMsg(method string) proto.Message {
	switch method {
	case "/shoal.api.Dispatcher/Session":
		return &api.SessionRequest{}
	case "/shoal.api.Dispatcher/Assignments":
		return &api.AssignmentsRequest{}
	case "/shoal.api.Control/Watch":
		return &api.WatchRequest{}
	}
	return &api.RaftMessageBatch{}
}
