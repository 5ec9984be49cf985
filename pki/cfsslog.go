package pki

import (
	"sync"

	cfsslog "github.com/cloudflare/cfssl/log"
)

// quietCFSSL turns cfssl's package logger, which writes every signature and
// CSR at info level to the standard logger, down to errors. cfssl's logger
// is process-wide; pki sets it once, when it first uses cfssl (a root CA, a
// signer, a CSR), so a host program's output carries no cfssl chatter.
// A program that wants cfssl's logs sets cfsslog.Level after that.
var quietCFSSL = sync.OnceFunc(func() { cfsslog.Level = cfsslog.LevelError })
