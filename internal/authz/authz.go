package authz

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoalhq/shoal/pki"
)

// Rule is who may call a method.
type Rule int

// The rules, from the most open.
const (
	Anyone   Rule = iota // no certificate needed
	AnyCert              // any certificate of this cluster
	Node                 // a node (worker or manager) certificate
	Manager              // a manager certificate
	Operator             // a manager or operator (client) certificate
)

// String returns the rule's name.
func (r Rule) String() string {
	switch r {
	case Anyone:
		return "anyone"
	case AnyCert:
		return "any certificate"
	case Node:
		return "node"
	case Manager:
		return "manager"
	case Operator:
		return "operator"
	}
	return "unknown"
}

// RuleFor returns the rule of a full gRPC method name; false for a method
// that is not Shoal's (refused).
func RuleFor(method string) (Rule, bool) {
	switch {
	case method == "/shoal.api.CA/GetRootCA", method == "/shoal.api.Join/Join":
		return Anyone, true
	case strings.HasPrefix(method, "/shoal.api.CA/"):
		return AnyCert, true
	case strings.HasPrefix(method, "/shoal.api.Dispatcher/"):
		return Node, true
	case strings.HasPrefix(method, "/shoal.api.Raft/"):
		return Manager, true
	case strings.HasPrefix(method, "/shoal.api.Control/"):
		return Operator, true
	}
	return 0, false
}

// NodeRecord is what the store says of a node, for Config.Lookup.
type NodeRecord struct {
	// Checked is false when there is no loaded store to ask (a worker, or a
	// manager replaying its log): the certificate alone decides.
	Checked bool
	// Exists and Manager say whether the node is in the store, and as a
	// manager.
	Exists, Manager bool
}

// Config configures an Authorizer.
type Config struct {
	// ClusterID returns this node's cluster ID ("" while unknown: any
	// cluster's certificate passes the cluster check). Called on every
	// authenticated RPC; must not block.
	ClusterID func() string
	// Lookup, if set, reports what the store says of a node. Called on
	// every RPC by a node certificate; must be cheap and not block.
	Lookup func(nodeID string) NodeRecord
}

// Authorizer checks every RPC of a server.
type Authorizer struct{ cfg Config }

// New returns an Authorizer.
func New(cfg Config) *Authorizer {
	if cfg.ClusterID == nil {
		cfg.ClusterID = func() string { return "" }
	}
	return &Authorizer{cfg: cfg}
}

// Authorize checks the caller of method and returns its subject (zero for an
// anonymous caller of an open method).
func (a *Authorizer) Authorize(ctx context.Context, method string) (pki.Subject, error) {
	rule, ok := RuleFor(method)
	if !ok {
		return pki.Subject{}, status.Errorf(codes.PermissionDenied, "%s: not a Shoal method", method)
	}
	subj, _, has := pki.PeerSubject(ctx)
	if rule == Anyone {
		return subj, nil
	}
	if !has {
		return subj, status.Errorf(codes.Unauthenticated, "%s needs a client certificate of this cluster", method)
	}
	if clusterID := a.cfg.ClusterID(); clusterID != "" && subj.ClusterID != clusterID {
		return subj, status.Errorf(codes.PermissionDenied, "certificate is for cluster %s, not this one (%s)", subj.ClusterID, clusterID)
	}
	switch rule {
	case Node:
		if subj.Role != pki.OUWorker && subj.Role != pki.OUManager {
			return subj, status.Errorf(codes.PermissionDenied, "%s is for nodes; the caller's certificate is a %s certificate", method, subj.Role)
		}
	case Manager:
		if subj.Role != pki.OUManager {
			return subj, status.Errorf(codes.PermissionDenied, "%s is for managers; the caller's certificate is a %s certificate", method, subj.Role)
		}
	case Operator:
		if subj.Role != pki.OUManager && subj.Role != pki.OUClient {
			return subj, status.Errorf(codes.PermissionDenied, "%s needs a manager or operator certificate; the caller's certificate is a %s certificate", method, subj.Role)
		}
	}
	if subj.Role == pki.OUClient || a.cfg.Lookup == nil {
		return subj, nil
	}
	if rec := a.cfg.Lookup(subj.NodeID); rec.Checked {
		if !rec.Exists {
			return subj, status.Errorf(codes.PermissionDenied, "node %s was removed from the cluster; its certificate is no longer accepted", subj.NodeID)
		}
		if (rule == Manager || rule == Operator) && !rec.Manager {
			return subj, status.Errorf(codes.PermissionDenied, "node %s is no longer a manager", subj.NodeID)
		}
	}
	return subj, nil
}

// nodeScoped is a request that names the node it is about.
type nodeScoped interface{ GetNodeId() string }

// checkOwnNode refuses a dispatcher request that names another node than
// the caller's.
func checkOwnNode(method string, subj pki.Subject, req any) error {
	r, ok := req.(nodeScoped)
	if !ok || !strings.HasPrefix(method, "/shoal.api.Dispatcher/") {
		return nil
	}
	if id := r.GetNodeId(); id != subj.NodeID {
		return status.Errorf(codes.PermissionDenied, "node %s may only act for itself, not for node %s", subj.NodeID, id)
	}
	return nil
}

// Unary is the server's unary interceptor.
func (a *Authorizer) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	subj, err := a.Authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	if err := checkOwnNode(info.FullMethod, subj, req); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

// Stream is the server's stream interceptor: every message received on a
// dispatcher stream must name the caller's own node.
func (a *Authorizer) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	subj, err := a.Authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return h(srv, &ownNodeStream{ServerStream: ss, method: info.FullMethod, subj: subj})
}

// ownNodeStream checks every request received on a stream (a session's or
// assignment stream's opening request) names the caller's own node.
type ownNodeStream struct {
	grpc.ServerStream
	method string
	subj   pki.Subject
}

func (s *ownNodeStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return checkOwnNode(s.method, s.subj, m)
}
