// Package api holds Shoal's wire and storage format: the protobuf messages of
// stored objects and the gRPC services between nodes and clients. Public
// types in the root package are converted to and from these in one place.
package api

//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --plugin=protoc-gen-go-grpc=$(go tool -n protoc-gen-go-grpc) --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative *.proto"
