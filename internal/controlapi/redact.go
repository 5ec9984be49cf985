package controlapi

import (
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

// This file is the one place that keeps secrets out of the control API's
// answers: every read and write RPC and every watch event passes the
// objects it returns through these. Each returns its argument itself when
// it holds no secret (the read RPCs answer with the store's shared objects,
// so the common case copies nothing), else a copy without the secrets.

// Redact returns the cluster object as the API shows it: without the root
// CA's private key and the external CA's authentication key, which never
// leave the managers' store, nor the gossip keys. c itself is not modified.
func Redact(c *api.Cluster) *api.Cluster {
	if c == nil || (len(c.GetRootCa().GetKeyPem()) == 0 && c.GetRootCa().GetExternalAuthKey() == "" &&
		len(c.GetGossip().GetKeys()) == 0) {
		return c
	}
	out := proto.Clone(c).(*api.Cluster)
	if out.RootCa != nil {
		out.RootCa.KeyPem = nil
		out.RootCa.ExternalAuthKey = ""
	}
	if out.Gossip != nil {
		out.Gossip.Keys = nil
	}
	return out
}

// RedactService returns svc without its task spec's registry credentials:
// they go to the nodes that run its tasks and nowhere else. svc itself is
// not modified.
func RedactService(svc *api.Service) *api.Service {
	if svc.GetSpec().GetTask().GetRegistryAuth() == nil {
		return svc
	}
	out := proto.Clone(svc).(*api.Service)
	out.Spec.Task.RegistryAuth = nil
	return out
}

// RedactTask returns t without its spec's registry credentials. t itself is
// not modified.
func RedactTask(t *api.Task) *api.Task {
	if t.GetSpec().GetRegistryAuth() == nil {
		return t
	}
	out := proto.Clone(t).(*api.Task)
	out.Spec.RegistryAuth = nil
	return out
}

// redactObject redacts o by its kind; other kinds hold no secret.
func redactObject(o state.Object) state.Object {
	switch v := o.(type) {
	case *api.Cluster:
		if v != nil {
			return Redact(v)
		}
	case *api.Service:
		if v != nil {
			return RedactService(v)
		}
	case *api.Task:
		if v != nil {
			return RedactTask(v)
		}
	}
	return o
}

// redactServices and redactTasks redact a list in place: the slice is the
// caller's, its elements the store's.
func redactServices(ss []*api.Service) []*api.Service {
	for i, s := range ss {
		ss[i] = RedactService(s)
	}
	return ss
}

func redactTasks(ts []*api.Task) []*api.Task {
	for i, t := range ts {
		ts[i] = RedactTask(t)
	}
	return ts
}
