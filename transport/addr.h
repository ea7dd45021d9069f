/* SPDX-License-Identifier: MIT */
/*
 * addr.h - "HOST:PORT" addresses, as the network transports (tcp:, tls:,
 * rdma:) take them: a host name or IPv4 address, or an IPv6 address in
 * brackets ("[::1]:7000"), then a decimal port.
 */
#ifndef PC_ADDR_H
#define PC_ADDR_H

#include <stdbool.h>
#include <stddef.h>

struct addrinfo;

/**
 * pc_addr_split() - split @addr, "HOST:PORT" or "[V6]:PORT", into @host
 * (without brackets) and @port, NUL-terminated in buffers of @hostlen and
 * @portlen bytes.
 * Return: 0; -EINVAL if @addr is not of that form (an IPv6 address
 * without brackets, an empty host or port, a port that is not a decimal
 * number up to 65535) or does not fit.
 */
int pc_addr_split(const char *addr, char *host, size_t hostlen, char *port, size_t portlen);

/**
 * pc_addr_resolve() - look @addr up with getaddrinfo() for a stream
 * socket of either family; @passive to bind it (AI_PASSIVE). The caller
 * frees *@res with freeaddrinfo().
 * Return: 0; -EINVAL (see pc_addr_split()); -EHOSTUNREACH if the host
 * cannot be resolved; another -errno if the lookup itself failed.
 */
int pc_addr_resolve(const char *addr, bool passive, struct addrinfo **res);

#endif /* PC_ADDR_H */
