<%@ page contentType="text/plain; charset=UTF-8" %>mooring tomcat on <%= System.getenv("MOORING_HOST") %>
server name <%= request.getServerName() %>:<%= request.getServerPort() %>, scheme <%= request.getScheme() %>, client <%= request.getRemoteAddr() %>
