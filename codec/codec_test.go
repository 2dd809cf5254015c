package codec

import (
	"errors"
	"io"
	"testing"

	"github.com/tpconvert/tpconvert/tensor"
)

type fake struct{}

func (fake) ID() uint16                                     { return 0xfffe }
func (fake) Name() string                                   { return "fake" }
func (fake) Version() uint16                                { return 1 }
func (fake) Params() string                                 { return "" }
func (fake) Encode(io.Writer, tensor.Info, []float32) error { return nil }
func (fake) Decode([]float32, []byte, tensor.Info, uint16) error {
	return nil
}
func (fake) Cost(tensor.Info) int64 { return 0 }

// TestRegistryDeclarations: Default, DefaultLayers, Plans and Accepts
// answer from what a codec registered and declared; Only refuses the
// options a codec does not take and nothing else.
func TestRegistryDeclarations(t *testing.T) {
	if Default() != "none" || DefaultLayers("fake") != "" || Plans("fake") || Accepts("fake", Options{}) {
		t.Fatal("answers before registration")
	}
	Register(0xfffe, "fake", "test codec", func(o Options) (Codec, error) {
		if err := o.Only("fake", TakesGroupSize); err != nil {
			return nil, err
		}
		return fake{}, nil
	})
	SetDefault("fake")
	SetDefaultLayers("fake", "weights")
	if Default() != "fake" || DefaultLayers("fake") != "weights" {
		t.Errorf("Default %q, DefaultLayers %q", Default(), DefaultLayers("fake"))
	}
	if Plans("fake") {
		t.Error("a codec without a planner plans")
	}
	for _, c := range []struct {
		o  Options
		ok bool
	}{
		{Options{}, true},
		{Options{GroupSize: 8, Seed: 3, Workers: 2}, true},
		{Options{Rank: 4}, false},
		{Options{Workers: -1}, false},
	} {
		_, err := New("fake", c.o)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrOption)) || Accepts("fake", c.o) != c.ok {
			t.Errorf("%+v: error %v, Accepts %v; want accepted %v", c.o, err, Accepts("fake", c.o), c.ok)
		}
	}
	if (Options{Workers: 3}).PerTensor() != 3 || (Options{}).PerTensor() < 1 {
		t.Error("PerTensor")
	}
}
