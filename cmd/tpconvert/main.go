// Command tpconvert compresses LLM checkpoints (safetensors files, sharded
// Hugging Face checkouts, GGUF files) into .tpk files with the TenPak-X
// codecs (v2 sized by --bpw or --target-size) or a baseline codec, and restores .tpk files to the container they
// came from for runtimes that do not read .tpk.
//
// Usage:
//
//	tpconvert [compress] INPUT [-o OUT.tpk] [flags]
//	tpconvert restore IN.tpk|DIR [-o OUT] [flags]
//	tpconvert batch SRC... -o OUTDIR [flags]
//	tpconvert inspect FILE [--json]
//	tpconvert verify FILE.tpk
//
// Run "tpconvert help" or "tpconvert COMMAND --help" for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tpconvert/tpconvert/internal/atomicfile"

	// Codecs register themselves.
	_ "github.com/tpconvert/tpconvert/codec/basic"
	_ "github.com/tpconvert/tpconvert/codec/intq"
	_ "github.com/tpconvert/tpconvert/codec/lossless"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `tpconvert: compress LLM checkpoints without calibration data

Usage:
  tpconvert [compress] INPUT [-o OUT.tpk] [flags]   compress a checkpoint
  tpconvert restore IN.tpk|DIR [-o OUT] [flags]     rebuild safetensors/GGUF
  tpconvert batch SRC... -o OUTDIR [flags]          convert many checkouts
  tpconvert inspect FILE [--json]                   list tensors, codecs, sizes
  tpconvert verify FILE.tpk                         check structure and checksums
  tpconvert codecs                                  list the codecs
  tpconvert version

INPUT is a .safetensors file, a .gguf file, or a Hugging Face checkout
directory (model.safetensors.index.json and its shards). Formats are
recognised by their content, not their names.

Choose the size with --bpw (bits per parameter, whole file) or
--target-size (bytes, e.g. 1GiB): tenpak_x_v2 then allocates the bits
over every weight matrix. Example: tpconvert model.safetensors --bpw 4
Keep every tensor bit-exact (and smaller) with --lossless.

Run 'tpconvert COMMAND --help' for a command's flags. The user's guide is
CONVERTING.md.

Exit status: 0 success, 1 error, 2 usage error, 130 interrupted.
`

// errUsage marks errors in the command line (exit status 2).
type errUsage struct{ error }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := dispatch(ctx, args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case ctx.Err() != nil:
		atomicfile.RemoveAll()
		fmt.Fprintln(stderr, "tpconvert: interrupted; no partial output file was left")
		return 130
	}
	fmt.Fprintf(stderr, "tpconvert: %s\n", oneLine(err))
	var ue errUsage
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "Run 'tpconvert help' for usage.")
		return 2
	}
	return 1
}

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage{errors.New("no input given")}
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "version", "--version":
		fmt.Fprintln(stdout, "tpconvert", version)
		return nil
	case "compress":
		return cmdCompress(ctx, args[1:], stdout, stderr)
	case "restore":
		return cmdRestore(ctx, args[1:], stdout, stderr)
	case "batch":
		return cmdBatch(ctx, args[1:], stdout, stderr)
	case "inspect":
		return cmdInspect(args[1:], stdout, stderr)
	case "verify":
		return cmdVerify(args[1:], stdout, stderr)
	case "codecs":
		return cmdCodecs(stdout)
	}
	if strings.HasPrefix(args[0], "-") || fileExists(args[0]) {
		return cmdCompress(ctx, args, stdout, stderr)
	}
	return errUsage{fmt.Errorf("unknown command or missing file %q", args[0])}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// parse parses flags that may come before or after the positional
// arguments ("tpconvert model.safetensors -o out.tpk").
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage{err}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}
