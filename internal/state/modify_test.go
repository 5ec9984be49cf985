package state

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/shoalhq/shoal/internal/api"
)

// fill sets every field of m (recursively) to a non-zero value.
func fill(m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		switch {
		case f.IsList():
			l := m.Mutable(f).List()
			if f.Kind() == protoreflect.MessageKind {
				e := l.NewElement()
				fill(e.Message())
				l.Append(e)
			} else {
				l.Append(scalar(f))
			}
		case f.IsMap():
			m.Mutable(f).Map().Set(protoreflect.ValueOfString("k").MapKey(), scalar(f.MapValue()))
		case f.Kind() == protoreflect.MessageKind:
			fill(m.Mutable(f).Message())
		default:
			m.Set(f, scalar(f))
		}
	}
}

func scalar(f protoreflect.FieldDescriptor) protoreflect.Value {
	switch f.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("x")
	case protoreflect.Uint64Kind:
		return protoreflect.ValueOfUint64(7)
	case protoreflect.Int64Kind:
		return protoreflect.ValueOfInt64(7)
	case protoreflect.Int32Kind:
		return protoreflect.ValueOfInt32(7)
	case protoreflect.Uint32Kind:
		return protoreflect.ValueOfUint32(7)
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{7})
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(1)
	}
	panic("unhandled kind " + f.Kind().String())
}

func TestShallowTaskCopiesEveryField(t *testing.T) {
	var full api.Task
	fill(full.ProtoReflect())
	c := shallowTask(&full)
	assert.True(t, proto.Equal(&full, c), "shallowTask misses a field of api.Task")
	assert.NotSame(t, full.Status, c.Status, "Status is copied")
}

func TestModifyTask(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateTask(task("t1", "s", 1, "")) }))
	var before *api.Task
	s.View(func(tx ReadTx) { before = tx.GetTask("t1") })
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		require.NoError(t, tx.ModifyTask("t1", func(x *api.Task) error {
			x.NodeId = "n1"
			x.Status.State = api.TaskState_TASK_STATE_ASSIGNED
			return nil
		}))
		// A second modification in the same transaction sees the first.
		require.NoError(t, tx.ModifyTask("t1", func(x *api.Task) error {
			assert.Equal(t, "n1", x.NodeId)
			return ErrSkip
		}))
		assert.ErrorIs(t, tx.ModifyTask("nope", func(*api.Task) error { return nil }), ErrNotFound)
		return nil
	}))
	s.View(func(tx ReadTx) {
		got := tx.GetTask("t1")
		assert.Equal(t, "n1", got.NodeId)
		assert.Equal(t, api.TaskState_TASK_STATE_ASSIGNED, got.Status.State)
		assert.Greater(t, got.Meta.Version, before.Meta.Version)
	})
	assert.Equal(t, api.TaskState_TASK_STATE_NEW, before.Status.State, "the earlier copy is untouched")
}

func TestCopyStatusCopiesEveryField(t *testing.T) {
	var full api.TaskStatus
	fill(full.ProtoReflect())
	assert.True(t, proto.Equal(&full, copyStatus(&full)), "copyStatus misses a field of api.TaskStatus")
}
