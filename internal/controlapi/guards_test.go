package controlapi_test

import (
	"github.com/shoalhq/shoal/internal/controlapi"
	"github.com/shoalhq/shoal/raftstore"
)

// raftstore.Node is the implementation the node passes.
var (
	_ controlapi.MemberAdmin = (*raftstore.Node)(nil)
	_ controlapi.Membership  = (*raftstore.Node)(nil)
)
