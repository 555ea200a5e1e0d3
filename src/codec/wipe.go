package codec

import (
	"reflect"
	"sync"
	"unsafe"
)

// Wipe zeroes the key's AES state: the expanded key schedule in its block
// cipher and the copy of it, and the hash key, in its GCM. crypto/aes
// offers no way to do this, so it is done from outside, on the memory of
// the structures they point to, and only when those hold no pointers (true
// of Go's AES and GCM on amd64 and arm64; not on s390x, where the state is
// then left to the garbage collector). It reports whether both were wiped.
//
// The key must not be used afterwards, nor while Wipe runs: it panics
// rather than encrypt under a zeroed key.
func (k *Key) Wipe() bool {
	ok := zeroPointee(k.block)
	ok = zeroPointee(k.gcm) && ok
	k.block, k.gcm = nil, nil
	return ok
}

// zeroPointee overwrites what v, a pointer in an interface, points to, if
// that is pointer-free: zeroing a pointer would corrupt the heap. It also
// wipes crypto/cipher's CBC modes after each use, since for AES they copy
// the whole key schedule (their second allocation per call).
//
// v may also be a struct that only wraps such a pointer:
// cipher.NewGCMWithRandomNonce returns its GCM state (a copy of the AES
// schedule and the hash key) inside a one-field struct value.
func zeroPointee(v any) bool {
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Struct && rv.NumField() == 1 {
		rv = rv.Field(0)
	}
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return false
	}
	t := rv.Type().Elem()
	free, known := pointerFreeTypes.Load(t)
	if !known {
		free, _ = pointerFreeTypes.LoadOrStore(t, pointerFree(t))
	}
	if !free.(bool) {
		return false
	}
	clear(unsafe.Slice((*byte)(rv.UnsafePointer()), t.Size()))
	return true
}

// pointerFreeTypes caches pointerFree, which walks a type's fields, for
// the few types zeroPointee sees.
var pointerFreeTypes sync.Map // reflect.Type -> bool

func pointerFree(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return true
	case reflect.Array:
		return pointerFree(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if !pointerFree(t.Field(i).Type) {
				return false
			}
		}
		return true
	}
	return false
}
