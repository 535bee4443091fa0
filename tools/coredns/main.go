// A minimal CoreDNS for the local testbed: coremain.Run with only the plugins the testbed's Corefile uses.
// Upstream's own main (github.com/coredns/coredns v1.14.7, coredns.go) blank-imports core/plugin, which
// pulls every plugin and its cloud SDKs; here the directive list is the upstream order
// (core/dnsserver/zdirectives.go at v1.14.7) restricted to the imported plugins.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/template"
)

func init() {
	dnsserver.Directives = []string{
		"reload", "bind", "ready", "health", "errors", "log", "loadbalance", "cache",
		"template", "kubernetes", "loop", "forward",
	}
}

func main() {
	coremain.Run()
}
