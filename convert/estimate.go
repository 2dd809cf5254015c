package convert

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/tpconvert/tpconvert/formats"
)

// A plan whose sizes are estimates (codec.SizeEstimator) records, in the
// params of each planned tensor's record, the importance-weighted SQNR it
// estimated for the tensor: the config, a space, estKey and the value in
// dB with two decimals (999.00 for no error). Inspect shows it beside the
// tensor's measured error. Plans of exact sizes (tenpak_x_v2) record no
// estimate, so their files are as they were.
const estKey = "est_wsqnr_db="

// estNote returns the note for a relative weighted error rel.
func estNote(rel float64) string {
	db := 999.0
	if rel > 0 {
		db = max(-99.99, min(999, -10*math.Log10(rel)))
	}
	return fmt.Sprintf("%s%.2f", estKey, db)
}

// longestNote is as long as any estNote.
var longestNote = estKey + "-99.99"

// splitEstimate returns params without a recorded estimate, and the
// estimate (nil if there is none).
func splitEstimate(params string) (string, *float64) {
	i := strings.LastIndex(params, " "+estKey)
	if i < 0 {
		return params, nil
	}
	v, err := strconv.ParseFloat(params[i+1+len(estKey):], 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return params, nil
	}
	return params[:i], &v
}

// TensorConfig returns a record's params without the plan's estimate:
// for a codec that plans, the tensor's Config.
func TensorConfig(params string) string {
	c, _ := splitEstimate(params)
	return c
}

// noteSink appends each planned tensor's note to the params of its record
// when the planned codec (ID id) coded it.
type noteSink struct {
	formats.RecordSink
	id    uint16
	notes map[string]string
}

func (s *noteSink) note(r formats.Record) formats.Record {
	if n, ok := s.notes[r.Name]; ok && r.CodecID == s.id {
		r.Params += " " + n
	}
	return r
}

func (s *noteSink) WriteRecord(r formats.Record, payload ...[]byte) error {
	return s.RecordSink.WriteRecord(s.note(r), payload...)
}

func (s *noteSink) BeginRecord(r formats.Record, size int64) error {
	return s.RecordSink.BeginRecord(s.note(r), size)
}

// Grow passes the hint on (stream's grower).
func (s *noteSink) Grow(n int) {
	if g, ok := s.RecordSink.(interface{ Grow(int) }); ok {
		g.Grow(n)
	}
}

// withNotes returns a newRecordSink whose records carry notes.
func withNotes(id uint16, notes map[string]string) func(io.Writer, *formats.Meta) (formats.RecordSink, error) {
	return func(w io.Writer, m *formats.Meta) (formats.RecordSink, error) {
		s, err := newRecordSink(w, m)
		if err != nil {
			return nil, err
		}
		return &noteSink{RecordSink: s, id: id, notes: notes}, nil
	}
}
