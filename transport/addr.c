/* SPDX-License-Identifier: MIT */
/* addr.c - "HOST:PORT" addresses of the network transports (see addr.h). */
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "addr.h"

int pc_addr_split(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
	const char *colon, *h = addr;
	size_t n;

	if (!addr || !*addr)
		return -EINVAL;
	if (*addr == '[') {
		const char *end = strchr(addr, ']');

		if (!end || end[1] != ':')
			return -EINVAL;
		h = addr + 1;
		n = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon)
			return -EINVAL;
		n = (size_t)(colon - addr);
		if (memchr(addr, ':', n))
			return -EINVAL; /* bare IPv6 needs brackets */
	}
	if (n == 0 || n >= hostlen || !colon[1] || strlen(colon + 1) >= portlen)
		return -EINVAL;
	memcpy(host, h, n);
	host[n] = '\0';
	strcpy(port, colon + 1);
	for (const char *p = port; *p; p++)
		if (*p < '0' || *p > '9')
			return -EINVAL;
	if (atol(port) > 65535)
		return -EINVAL;
	return 0;
}

int pc_addr_resolve(const char *addr, bool passive, struct addrinfo **res)
{
	char host[256], port[8];
	/* the port is digits only (pc_addr_split), so never a service name */
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = (passive ? AI_PASSIVE : 0) | AI_NUMERICSERV };
	int err = pc_addr_split(addr, host, sizeof(host), port, sizeof(port));

	if (err)
		return err;
	err = getaddrinfo(host, port, &hints, res);
	if (err)
		return err == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
	return 0;
}
